"""RAVAN (Raje et al., NeurIPS 2025): ``h`` heads ``s_i B_i H_i A_i`` between frozen data-free bases; clients
train ``H_i`` and ``s_i`` of the heads they select and upload the products ``s_i H_i``; the server averages
each head over the clients that trained it and resets every ``s_i`` to 1."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.config import RunConfig
from fedsb.errors import FedsbError, UsageError
from fedsb.methods.base import ClientUpdate, Method, MethodOptions, ServerState
from fedsb.objectives.base import Objective

_H = ".lora_H."


def head_of(name: str) -> int | None:
    """The head index of ``<module>.lora_H.<i>.weight``; None for any other name (the task head)."""
    if _H not in name:
        return None
    return int(name.rpartition(_H)[2].partition(".")[0])


class ClientSide(Protocol):
    """What head selection reads of a :class:`fedsb.core.federation.Federation` (methods sit below core)."""

    cfg: RunConfig
    adapted: AdaptedModel
    objective: Objective

    def client_batches(self, client: int, round_idx: int) -> Iterator[Any]: ...


class RavanOptions(MethodOptions):
    """``[method_options]`` of ``method = "ravan"``."""

    #: Heads per layer; a perfect square, so that ``r_h = r / sqrt(heads)`` is an integer (the paper: 4).
    heads: int = Field(default=4, ge=1)
    #: Frozen bases: QR-orthonormal (falls back to ``normal`` where ``heads * r_h > min(d_in, d_out)``) or N(0, 1/d).
    init: Literal["gram-schmidt", "normal"] = "gram-schmidt"
    #: Which heads a client trains: every head, ``K_c`` random ones, or the ``K_c`` with the largest gradient.
    selection: Literal["all", "random", "gradient"] = "all"
    #: Compute budget of client ``c``: ``head_fractions[c % len]``; it trains ``K_c = max(1, ceil(f * heads))`` heads.
    head_fractions: tuple[float, ...] = ()
    #: ``per-head``: mean over the head's trainers (the paper); ``all``: FedAvg over every sampled client, a
    #: client that did not train a head counting its unchanged broadcast value.
    aggregation: Literal["per-head", "all"] = "per-head"
    #: Train ``s_i`` (the paper's default); False keeps ``s_i = 1`` (its constant variant, no ``s H`` cross term under DP).
    trainable_scale: bool = True

    @field_validator("heads")
    @classmethod
    def _square(cls, h: int) -> int:
        if math.isqrt(h) ** 2 != h:
            raise ValueError(f"heads = {h} is not a perfect square, so r / sqrt(heads) is never an integer; use 1, 4, 9 or 16")
        return h

    @field_validator("head_fractions")
    @classmethod
    def _fractions(cls, fs: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f <= 1 for f in fs):
            raise ValueError(f"head_fractions {list(fs)} must lie in (0, 1]")
        return fs

    @model_validator(mode="after")
    def _selection_uses_fractions(self) -> RavanOptions:
        if self.selection == "all" and any(f < 1 for f in self.head_fractions):
            raise ValueError("selection = 'all' trains every head; set selection = 'random' or 'gradient' to use head_fractions")
        return self


class RAVAN(Method):
    """RAVAN: multi-head LoRA with frozen data-free bases.

    Exact per head: ``B_i, A_i`` are shared and frozen and clients upload the product ``s_i H_i``, so
    ``B_i (sum_c p_c s_ci H_ci) A_i = sum_c p_c B_i s_ci H_ci A_i`` over the head's trainers (the weights ``p``
    renormalised over them). With every head trained by every client the new update is the weighted mean of the
    clients' updates. ``adapter.rank`` is Fed-SB's ``r`` at the same budget (``heads * r_h^2 = r^2``, so
    ``r_h = r / sqrt(heads)``): ``r^2`` per layer each way at full participation, ``K_c r_h^2`` up for a client
    training ``K_c`` heads. The bases are broadcast once (``heads * r_h (d_in + d_out)`` per layer). No ``alpha / r``
    scale: ``adapter.alpha`` is ignored, the trained ``s_i`` play its role.

    Head selection is per head index across all layers (a client trains head ``i`` in every adapted layer or in
    none), so one set of indices describes an upload. Gradient scoring sums ``||dL/d(s_i H_i)||_F`` over the
    layers on the first mini-batch of the client's round; it reads a private batch without noise, so it is
    refused under DP.
    """

    name = "ravan"
    adapter_mode = "ravan"
    exact = True
    additive = True
    core_rank = True
    summary = "h heads s_i B_i H_i A_i between frozen data-free bases; per-head mean of s_i H_i (exact per head, r^2 per layer per round)"
    plot_style = ("P", "tab:cyan")
    relative_cost = 2
    Options = RavanOptions

    options: RavanOptions

    # --- what the method knows about itself -------------------------------------------------------------
    @classmethod
    def head_rank(cls, rank: int, heads: int) -> int:
        """``r_h = r / sqrt(heads)`` (equal budget ``heads * r_h^2 = r^2``); a rank that gives no integer is refused."""
        root = math.isqrt(heads)
        if root * root != heads:
            raise UsageError(f"RAVAN heads = {heads} is not a perfect square; set method_options.heads to 1, 4, 9 or 16")
        if rank % root:
            raise UsageError(f"RAVAN: adapter.rank = {rank} is Fed-SB's r at an equal budget (r_h = r / sqrt(heads)), "
                             f"which needs a multiple of sqrt(heads) = {root}; set adapter.rank to {max(root, rank // root * root)} "
                             f"or {(rank // root + 1) * root}")
        return rank // root

    @classmethod
    def adapter_rank(cls, rank: int, options: MethodOptions) -> int:
        """The total rank ``heads * r_h`` of the stacked bases for config rank ``rank``."""
        heads = cls._opts(options).heads
        return heads * cls.head_rank(rank, heads)

    @classmethod
    def adapter_kwargs(cls, options: MethodOptions) -> dict[str, Any]:
        opts = cls._opts(options)
        return {"heads": opts.heads, "trainable_scale": opts.trainable_scale}

    @classmethod
    def _opts(cls, options: MethodOptions) -> RavanOptions:
        return options if isinstance(options, RavanOptions) else RavanOptions.model_validate(options.model_dump())

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * r, r * r  # heads * r_h^2 = r^2 for any number of heads (every head trained)

    @classmethod
    def layer_one_time_download(cls, r: int, d_out: int, d_in: int) -> int:
        # heads * r_h = sqrt(heads) * r columns of B and rows of A; the formula assumes the default heads.
        return math.isqrt(RavanOptions().heads) * r * (d_in + d_out)

    def round_params(self, r: int, dims: list[tuple[int, int]], k: int, clients: int) -> tuple[int, int]:
        # A client training K_c of the h heads uploads K_c r_h^2 per layer; every client gets all h r_h^2 = r^2.
        heads = self.options.heads
        trained = heads if self.options.selection == "all" else max(self.heads_for(c, heads) for c in range(max(1, clients)))
        r_h = self.head_rank(r, heads)
        return trained * r_h * r_h * len(dims), r * r * len(dims)

    def one_time_download(self, r: int, dims: list[tuple[int, int]]) -> int:
        # heads * r_h = sqrt(heads) * r columns of B and rows of A, for this run's number of heads
        return sum(math.isqrt(self.options.heads) * r * (d_in + d_out) for d_out, d_in in dims)

    @classmethod
    def default_lr(cls, rank: int) -> float:
        # Swept on the default task's validation slice (`fedsb compare --tune-lr`, seed 0): the best rate was 0.09
        # at r = 4 and 0.27 at r = 8 and 16, with 0.09-0.27 within 2 points at every rank; 1e-2 (the previous default)
        # lost 20-25 points. Not rank-scaled: the sweep showed no trend.
        return 0.2

    @classmethod
    def default_head_lr(cls, lr: float) -> float:
        return 3e-3  # as Fed-SB: the core's rate would destabilise the task head

    # --- which tensors travel -------------------------------------------------------------------------------
    def upload_names(self, adapted: AdaptedModel) -> list[str]:
        """``H_i`` (carrying ``s_i H_i``) of the active heads in every layer, then the task head."""
        active = adapted.active_heads
        return [f"{n}.lora_H.{i}.weight" for n in adapted.layers for i in active] + adapted.head_state_names()

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.lora_H.{i}.weight" for n in adapted.layers for i in range(adapted.heads)] + adapted.head_state_names()

    def one_time_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.{p}" for n in adapted.layers for p in ("lora_A.weight", "lora_B.weight")]

    # --- server ---------------------------------------------------------------------------------------
    def init_adapter(self, adapted: AdaptedModel) -> None:
        adapted.init_ravan(self.seed, self.options.init)

    def check_upload_names(self, got: set[str], expected: list[str]) -> str | None:
        """A non-empty set of whole heads (head ``i`` in every layer) plus the whole task head, nothing else."""
        extra = sorted(got - set(expected))[:3]
        if extra:
            return f"tensor names differ from the expected update (unexpected {extra})"
        task = [n for n in expected if head_of(n) is None]
        missing = sorted(set(task) - got)[:3]
        if missing:
            return f"tensor names differ from the expected update (missing {missing})"
        per_head: dict[int, set[str]] = {}
        for n in expected:
            i = head_of(n)
            if i is not None:
                per_head.setdefault(i, set()).add(n)
        sent = sorted({i for n in got if (i := head_of(n)) is not None})
        if not sent:
            return "the update trains no RAVAN head"
        partial = [i for i in sent if not per_head[i] <= got]
        if partial:
            return f"RAVAN head {partial[0]} is uploaded for only some layers (a head is trained in every layer or in none)"
        return None

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        """Per head: the weighted mean of ``s_i H_i`` over its trainers (``per-head``; an untrained head keeps its
        value) or over every client, a non-trainer counting the broadcast ``H_i`` (``all``); the task head: the
        weighted mean over every client. Weights are the configured ones, renormalised over who is averaged."""
        p = self.weights(updates)
        per_head = self.options.aggregation == "per-head"
        new: dict[str, Tensor] = {}
        for name, prev in state.adapter.items():
            acc = torch.zeros_like(prev, dtype=torch.float64)
            total = 0.0
            for u, w in zip(updates, p, strict=True):
                t = u.payload.get(name)
                if t is None:
                    if per_head:
                        continue
                    t = prev  # FedAvg semantics: the client's copy of an untrained head is the broadcast
                acc.add_(t.to(torch.float64), alpha=w)
                total += w
            new[name] = prev.clone() if total == 0 else (acc / total).to(torch.float32)
        return ServerState(round=state.round + 1, adapter=new)

    # --- both sides -----------------------------------------------------------------------------------
    def begin_round(self, adapted: AdaptedModel, aggregations: int) -> None:
        """Every ``s_i = 1`` (the last upload folded it into ``H_i``) and every head active."""
        adapted.reset_head_scales()
        adapted.set_active_heads(range(adapted.heads))

    def load_adapter(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        super().load_adapter(adapted, payload)
        adapted.reset_head_scales()  # the broadcast H_i already carry the scales

    # --- client ---------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: RunConfig, options: MethodOptions) -> None:
        opts, dp_mode = cls._opts(options), cfg.dp.mode
        if opts.selection == "gradient" and dp_mode != "off":
            raise UsageError(f"RAVAN gradient head scoring reads an unnoised private batch (dp.mode = {dp_mode!r}); "
                             "set method_options.selection = 'random' or 'all'")
        if dp_mode == "client" and opts.selection != "all":
            raise UsageError("dp.mode = client noises the mean of every head from every client; set "
                             "method_options.selection = 'all' (head subsets need sample-level DP)")
        if dp_mode == "client" and opts.trainable_scale:
            # The client clips its trained H_i and s_i, but uploads the product s_i H_i, whose change is not bounded
            # by that clip (the server re-clips, except under SecAgg+): keep s_i = 1.
            raise UsageError("dp.mode = client bounds what a client trains, not the product s_i H_i it uploads; set "
                             "method_options.trainable_scale = false")
        cls.head_rank(cfg.adapter.rank, opts.heads)

    def heads_for(self, client: int, heads: int) -> int:
        """``K_c``: how many heads client ``client`` trains."""
        fs = self.options.head_fractions
        f = fs[client % len(fs)] if fs else 1.0
        return max(1, min(heads, math.ceil(round(f * heads, 9))))

    def prepare_client(self, fed: ClientSide, client: int, round_idx: int) -> None:
        opts = self.options
        self.check_config(fed.cfg, opts)
        adapted = fed.adapted
        want = self.adapter_rank(fed.cfg.adapter.rank, opts)
        if adapted.rank != want:  # a builder that skipped adapter_rank would silently shrink the budget
            raise FedsbError(f"RAVAN model has stacked rank {adapted.rank}, expected heads x r_h = {want} for adapter.rank = "
                             f"{fed.cfg.adapter.rank}; build the adapters with Method.adapter_rank")
        h = adapted.heads
        k = self.heads_for(client, h)
        if opts.selection == "all" or k >= h:
            adapted.set_active_heads(range(h))
        elif opts.selection == "random":
            rng = random.Random(f"{self.seed}-ravan-{round_idx}-{client}")
            adapted.set_active_heads(rng.sample(range(h), k))
        else:
            scores = self.gradient_scores(fed, client, round_idx)
            adapted.set_active_heads(torch.argsort(scores, descending=True, stable=True)[:k].tolist())

    def gradient_scores(self, fed: ClientSide, client: int, round_idx: int) -> Tensor:
        """Per head, ``sum over layers of ||dL/d(s_i H_i)||_F`` on the first mini-batch of the client's round
        (dropout off, every head differentiated; nothing is changed)."""
        adapted = fed.adapted
        h = adapted.heads
        pairs = [(hm.weight, sm.weight) for layer in adapted.layers.values() for hm, sm in layer.ravan_heads()]
        hs = [hw for hw, _ in pairs]
        flags = [p.requires_grad for p in hs]
        was_training = adapted.training
        adapted.eval()
        try:
            for p in hs:
                p.requires_grad_(True)
            batch = fed.objective.collate(next(fed.client_batches(client, round_idx)))
            grads = torch.autograd.grad(fed.objective.loss(adapted.model, batch), hs)
        finally:
            for p, f in zip(hs, flags, strict=True):
                p.requires_grad_(f)
            adapted.train(was_training)
        scores = torch.zeros(h, dtype=torch.float64)
        for j, ((_, s), g) in enumerate(zip(pairs, grads, strict=True)):
            scores[j % h] += float(torch.linalg.norm(g.double() / float(s.detach())))  # d(s H) = dH / s
        return scores

    def client_update(self, adapted: AdaptedModel) -> dict[str, Tensor]:
        """``s_i H_i`` of the trained heads (under the ``H_i`` names), then the task head."""
        active = adapted.active_heads
        out: dict[str, Tensor] = {}
        for n, layer in adapted.layers.items():
            for i, prod in layer.head_products(active).items():
                out[f"{n}.lora_H.{i}.weight"] = prod.detach().to(device="cpu", dtype=torch.float32, copy=True)
        out.update(adapted.get_state(adapted.head_state_names()))
        return out
