"""Build everything a federated run needs from a config: model, adapters, task, client shards, method.

Shared by the in-process simulator and the Flower app, so both set up a run the same way.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsb.adapters.lora_sb_init import gradient_sums, lora_sb_init_from_directions
from fedsb.adapters.model import AdaptedModel
from fedsb.comm.accounting import size_of
from fedsb.config import RunConfig
from fedsb.core.personal import client_test_shares
from fedsb.core.training import Schedule, batch_stream
from fedsb.errors import FedsbError
from fedsb.init.broadcast import apply_broadcast, broadcast_size
from fedsb.init.sources import Combiner, init_source_for
from fedsb.methods import get_method, method_options
from fedsb.methods.base import Method
from fedsb.models.load import LoadedModel, ModelKind, load_model, resolve_device
from fedsb.objectives.base import Objective
from fedsb.tasks import load_task
from fedsb.tasks.base import Example, TaskData
from fedsb.tasks.partition import effective_split_by, partition_indices, split_key


@dataclass
class Federation:
    cfg: RunConfig
    loaded: LoadedModel
    adapted: AdaptedModel
    task: TaskData
    objective: Objective
    shards: list[list[Example]]
    method: Method
    device: torch.device
    public: list[Example] = field(default_factory=list)  # server-held examples for init.source = public

    @property
    def lr(self) -> float:
        return self.cfg.train.lr or get_method(self.cfg.method).default_lr(self.cfg.adapter.rank)

    @property
    def head_lr(self) -> float:
        if self.cfg.train.head_lr is not None:
            return self.cfg.train.head_lr
        return get_method(self.cfg.method).default_head_lr(self.lr)

    def local_steps(self, client: int) -> int:
        if self.cfg.train.local_epochs:
            return max(1, math.ceil(self.cfg.train.local_epochs * len(self.shards[client]) / self.cfg.train.batch_size))
        return self.cfg.train.local_steps

    def schedule(self) -> Schedule:
        per_round = max(self.local_steps(c) for c in range(len(self.shards)))
        total = per_round * self.cfg.federation.rounds
        return Schedule(total, int(self.cfg.train.warmup_ratio * total), self.cfg.train.schedule)

    def client_batches(self, client: int, round_idx: int, batch_size: int | None = None):
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + round_idx * 10_007 + client)
        return batch_stream(self.shards[client], batch_size or self.cfg.train.batch_size, g)

    def sample_clients(self, round_idx: int) -> list[int]:
        return scheduled_clients(self.cfg.seed, len(self.shards), self.cfg.federation.fraction, round_idx)

    def test_shares(self) -> list[list[Example]]:
        """The common test set dealt over the clients by their training mix of what the split went by (label or
        source; :func:`fedsb.core.personal.client_test_shares`)."""
        by = effective_split_by(self.cfg.federation.partition, self.cfg.federation.split_by)
        return client_test_shares(self.task.test, self.shards, self.cfg.seed, split_key(by, self.task.train))

    def init_batches(self, examples: list[Example], seed: int):
        """Batches of at most ``init.samples`` examples, for the LoRA-SB gradient estimate."""
        rng = random.Random(seed)
        chosen = rng.sample(examples, min(self.cfg.init.samples, len(examples)))
        bs = self.cfg.init.batch_size
        return [self.objective.collate(chosen[i : i + bs]) for i in range(0, len(chosen), bs)]


def scheduled_clients(seed: int, clients: int, fraction: float, round_idx: int) -> list[int]:
    """The clients of round ``round_idx``: a fixed-size subset drawn from the run seed.

    Public: anyone holding the config computes it, so it gives no privacy amplification (client-level DP
    accounts q = 1 for every round a client takes part in). A Flower node checks its train messages against it.
    """
    m = max(1, round(fraction * clients))
    rng = random.Random(f"{seed}-sample-{round_idx}")
    return sorted(rng.sample(range(clients), m))


def make_objective(cfg: RunConfig, loaded: LoadedModel, task: TaskData, device: torch.device) -> Objective:
    if loaded.kind == "classification":
        from fedsb.objectives.classification import ClassificationObjective

        return ClassificationObjective(loaded.tokenizer, cfg.task.max_length, device)
    from fedsb.objectives.causal_lm import CausalLMObjective

    return CausalLMObjective(loaded.tokenizer, cfg.task.max_length, device, cfg.eval.mode, task, cfg.task.chat_template)


ENCODER_FAMILIES = ("bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta")


def model_kind(cfg: RunConfig) -> ModelKind:
    """``model.kind``, or for ``auto``: encoders are classifiers, decoders are causal LMs."""
    if cfg.model.kind != "auto":
        return cfg.model.kind
    name = cfg.model.name
    if name in ("minilm", "tiny-bert"):
        return "classification"
    if name in ("smollm2", "tiny-llama", "tiny-gpt2"):
        return "causal-lm"
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return "causal-lm"
    return "classification" if conf.model_type in ENCODER_FAMILIES else "causal-lm"


def build_federation(cfg: RunConfig, kind: ModelKind | None = None) -> Federation:
    """Load model and data, inject adapters, split the data over clients (no init yet)."""
    torch.manual_seed(cfg.seed)
    kind = kind or model_kind(cfg)
    task = load_task(cfg.task, kind, cfg.seed)
    if not task.train or not task.test:
        raise FedsbError(f"task {task.name!r} has {len(task.train)} training and {len(task.test)} test examples; both must be > 0")
    loaded = load_model(cfg.model.name, kind, max(2, len(task.labels)), cfg.model.dtype, cfg.seed)
    return assemble_federation(cfg, loaded, task)


def assemble_federation(cfg: RunConfig, loaded: LoadedModel, task: TaskData) -> Federation:
    """Inject ``cfg``'s adapters into an already-loaded model (no adapters yet) and split ``task`` over clients.

    ``fedsb compare`` uses it to run many methods on one model load (see ``AdaptedModel.unload``).
    """
    device = resolve_device(cfg.model.device)
    method_cls = get_method(cfg.method)
    options = method_options(cfg.method, cfg.method_options, cfg)
    targets = cfg.model.targets or loaded.targets
    head = cfg.model.head if cfg.model.head is not None else loaded.head
    adapted = AdaptedModel(loaded.model, targets, method_cls.adapter_mode, method_cls.adapter_rank(cfg.adapter.rank, options),
                           cfg.adapter.alpha, head, **method_cls.adapter_kwargs(options))
    adapted.to(device)
    scaling = adapted.alpha / cfg.adapter.rank
    method = method_cls(scaling=scaling, weighting=cfg.federation.weighting, seed=cfg.seed, options=options)
    objective = make_objective(cfg, loaded, task, device)
    pool, public = list(task.train), []
    if cfg.init.source == "public" and not cfg.init.public_path and method_cls.gradient_init:
        # With no public data set given, the server holds out a slice of the training pool that no client
        # gets (never the test split, which would leak evaluation data into the init).
        n_pub = min(cfg.init.samples, max(1, len(pool) // 10))
        public, pool = pool[:n_pub], pool[n_pub:]
    key = split_key(effective_split_by(cfg.federation.partition, cfg.federation.split_by), pool)
    labels = [k if (k := key(e)) is not None else 0 for e in pool]
    idx = partition_indices(
        labels, cfg.federation.clients, cfg.federation.partition, cfg.seed, cfg.federation.dirichlet_alpha,
        cfg.federation.shards_per_client, [e.meta.get("source") for e in pool], cfg.federation.source_home_share,
    )
    shards = [[pool[i] for i in part] for part in idx]
    warn_truncation(objective, task.train, cfg.task.max_length)
    return Federation(cfg, loaded, adapted, task, objective, shards, method, device, public)


#: share of training examples longer than task.max_length above which a run warns
TRUNCATION_WARN_SHARE = 0.05


def warn_truncation(objective: Objective, examples: list[Example], max_length: int) -> float | None:
    """Warn when many training examples are longer than ``max_length`` (a classifier loses their end, e.g. the
    hypothesis of an NLI pair: a task can become unlearnable without any error). Returns the share cut."""
    measured = objective.truncation(examples, max_length)
    if measured is None:
        return None
    share, p95 = measured
    if share > TRUNCATION_WARN_SHARE:
        warnings.warn(
            f"{100 * share:.0f}% of the training examples are longer than task.max_length = {max_length} tokens and "
            f"are cut (95% are at most {p95}); raise --task.max_length to about {p95} to keep them whole",
            UserWarning, stacklevel=2,
        )
    return share


def layer_shapes(fed: Federation) -> dict[str, tuple[int, int]]:
    """``(d_out, d_in)`` of every adapted layer: what the server checks init messages against."""
    return {n: (layer.d_out, layer.d_in) for n, layer in fed.adapted.layers.items()}


def client_init_message(fed: Federation, client: int, privatised_by_caller: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """A client's init upload: its encoded gradient sum over ``init.samples`` local examples.

    Raw gradient sums of private data: refused when DP is on, unless the caller privatises them
    (``fedsb.privacy``); the DP trainers build the private messages instead.
    """
    if fed.cfg.dp.mode != "off" and not privatised_by_caller:
        raise FedsbError(
            f"refusing a non-private LoRA-SB init on client data with dp.mode = {fed.cfg.dp.mode!r}; "
            "use the DP trainer's init_messages (fedsb.privacy.make_dp_trainer) or init.source = public"
        )
    source = init_source_for(fed.cfg.init, fed.cfg.adapter.rank, layer_shapes(fed), fed.cfg.seed, client)
    batches = fed.init_batches(fed.shards[client], fed.cfg.seed * 7919 + client)
    sums, n = gradient_sums(fed.adapted, batches, fed.objective.loss, fed.objective.batch_size)
    return source.encode(sums, n), n


def public_init_examples(fed: Federation) -> list[Example]:
    """The server's public data: ``init.public_path`` or, by default, a slice of the training pool held
    out from every client (never the test split)."""
    if fed.cfg.init.public_path:
        data = load_task(fed.cfg.task.model_copy(update={"path": fed.cfg.init.public_path}), fed.task.kind, fed.cfg.seed)
        return data.train + data.test
    if not fed.public:
        # A federation built for another init source holds no public slice; an SVD of a zero gradient
        # would silently give a random subspace.
        raise FedsbError("init.source = public but this federation holds no public examples; set init.public_path, "
                         "or build the federation with init.source = public (it then holds out a slice of the training pool)")
    return fed.public


def initialise_adapters(fed: Federation, client_messages: Iterable[tuple[dict[str, torch.Tensor], int]] | None = None) -> dict[str, Any]:
    """Server-side adapter initialisation; returns the one-time upload (bytes, params) per client, what the
    server bounded (``clipped``: see :class:`fedsb.init.sources.Combiner`) and, for LoRA-SB methods, the encoded
    one-time message every client is sent (``broadcast``, Fed-SB's encoded B and A: see :mod:`fedsb.init.broadcast`)
    and its size per client (``broadcast_size``, what the ledger records).

    LoRA-SB methods: combine the clients' init messages (``federated``) or the server's own gradient on
    public data (``public``) into ``dW``, then SVD into B, A, R0. LoRA methods: seeded standard init.
    """
    cfg = fed.cfg
    if not fed.method.gradient_init:
        fed.method.init_adapter(fed.adapted)
        one_time = fed.adapted.get_state(fed.method.one_time_names(fed.adapted))  # RAVAN's B, A: float32
        return {"upload_bytes": 0, "upload_params": 0, "clipped": [], "broadcast": one_time,
                "broadcast_size": size_of(one_time, "float32")}
    source = init_source_for(cfg.init, cfg.adapter.rank, layer_shapes(fed), cfg.seed)
    # One client must not choose B and A (DESIGN §5.2). Under client-level DP the server already clips every
    # message to C, and its noise summand must keep its scale: no median clipping there.
    norm_factor = cfg.federation.init_norm_factor if cfg.dp.mode != "client" else 0.0
    combiner = Combiner(source, norm_factor, max_examples=cfg.init.samples)
    up_bytes = up_params = 0
    if source.federated:
        # Each message is added to the running total as it is made, so the server never holds all k.
        messages = client_messages if client_messages is not None else (client_init_message(fed, c) for c in range(len(fed.shards)))
        for msg, n in messages:
            up_bytes, up_params = max(up_bytes, source.upload_bytes(msg)), max(up_params, source.upload_params(msg))
            combiner.add(msg, n)
    else:
        batches = fed.init_batches(public_init_examples(fed), cfg.seed * 7919 - 1)
        sums, n = gradient_sums(fed.adapted, batches, fed.objective.loss, fed.objective.batch_size)
        combiner.add(source.encode(sums, n), n)
    directions = combiner.result()
    lora_sb_init_from_directions(fed.adapted, directions, cfg.init.svd, cfg.init.oversample, cfg.init.niter, cfg.seed)
    # Every party, the server included, runs on the bases as decoded from the one-time broadcast.
    broadcast = apply_broadcast(fed.adapted, cfg.init.broadcast_bits)
    return {"upload_bytes": up_bytes, "upload_params": up_params, "clipped": combiner.clipped, "broadcast": broadcast,
            "broadcast_size": broadcast_size(fed.adapted, broadcast, cfg.init.broadcast_bits)}
