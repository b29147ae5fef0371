"""The run configuration as a typed schema: one pydantic model per TOML section.

Types are strict as TOML writes them: an integer is accepted for a number, but a string is not accepted
for an integer (the command line parses ``--rank 8`` as TOML first, see :func:`fedsb.config.parse_value`),
and a comma-separated string is accepted for a list. Choices are ``Literal``\\ s, ranges ``Field`` bounds,
numbers are finite. The comment of each field is the key's reference (also in docs/configuration.md).
Invalid values, whether loaded or assigned (``cfg.train.threads = 0``), raise
:class:`fedsb.errors.UsageError` with a one-line message (:mod:`fedsb.config.messages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from fedsb.config.messages import one_line
from fedsb.errors import UsageError


def _int64(v: Any) -> Any:
    if type(v) is int and not -(2**63) <= v < 2**63:  # torch and safetensors hold 64-bit integers
        raise PydanticCustomError("int_too_large", "too large")
    return v


def _float(v: Any) -> Any:
    if type(v) is int:
        try:
            float(v)
        except OverflowError:
            raise PydanticCustomError("float_too_large", "too large") from None
    return v


def _names(v: Any) -> Any:
    return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v  # --model.targets q,v


Int = Annotated[int, BeforeValidator(_int64)]
Float = Annotated[float, BeforeValidator(_float)]
Names = Annotated[list[str], BeforeValidator(_names)]


class Section(BaseModel):
    """A strict, validated config table; errors become one-line :class:`UsageError`\\ s."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)
    section: ClassVar[str] = ""  # the TOML table's name, prefixed to the keys in messages

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UsageError(one_line(e, type(self), data)) from None

    # Only direct construction goes through this __init__: validation (model_validate, nested tables) reports
    # every error at once, so that one_line can pick the one to show (pydantic's RootModel does the same).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise UsageError(one_line(e, type(self))) from None


class ModelConfig(Section):
    section = "model"
    name: str = "minilm"  # builtin alias (minilm, smollm2, tiny-bert, tiny-llama, tiny-gpt2), local dir or hub id
    kind: Literal["auto", "classification", "causal-lm"] = "auto"  # auto: encoders classify, decoders generate
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # of the base model (adapters are always float32)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    targets: Names | None = None  # linear-layer name suffixes to adapt; None = per-architecture default
    head: Names | None = None  # trainable task-head modules; None = per-architecture default


class TaskConfig(Section):
    section = "task"
    name: str = "intent_recognition"  # builtin task name, or a format when `path` is given
    # local data file (BIG-bench task.json, JSON/JSONL), a folder with train/test files, or a suite: a folder of
    # such folders, loaded as one task whose examples are tagged with their sub-folder (their source)
    path: str | None = None
    # a BIG-bench task with sub-tasks (a folder of sub-folders each holding a task.json, e.g. arithmetic): the
    # sub-tasks to load, as names or glob patterns ("2_digit_*"); empty = all. Each example's source = its sub-task
    subtasks: Names = Field(default_factory=list)
    format: Literal["auto", "bigbench", "jsonl", "commonsense", "gsm8k", "metamath", "nli"] = "auto"
    prompt_field: str = "prompt"  # generic JSONL
    response_field: str = "response"  # generic JSONL
    # causal LMs: auto (wrap the prompt in the tokenizer's chat template if it has one) | on | off
    chat_template: Literal["auto", "on", "off"] = "auto"
    max_length: Int = Field(default=64, ge=8)
    test_fraction: Float = Field(default=0.2, gt=0, le=1)  # held-out share when the data has no test split
    max_test_examples: Int | None = Field(default=None, ge=1)
    # at most this many training / test examples per source (sub-folder of a suite; a plain task is one source):
    # a fixed subsample (split seed 0, not the run seed), so every method and seed sees the same examples
    max_train_per_source: Int | None = Field(default=None, ge=1)
    max_test_per_source: Int | None = Field(default=None, ge=1)
    # validation: score on a held-out slice of the training pool instead of the test split (for tuning)
    evaluate_on: Literal["test", "validation"] = "test"
    validation_fraction: Float = Field(default=0.15, gt=0, lt=1)

    @property
    def label(self) -> str:
        """Display name: the builtin task, or the data file (its folder for BIG-bench's ``task.json``)."""
        if not self.path:
            return self.name
        p = Path(self.path)
        return p.parent.name if p.name == "task.json" else p.stem


class AdapterConfig(Section):
    section = "adapter"
    rank: Int = Field(default=16, ge=1)
    alpha: Float | None = Field(default=None, gt=0)  # None = rank (scaling s = alpha / rank = 1, as LoRA-SB uses)


class InitConfig(Section):
    section = "init"
    # docs "Initialisation and its communication cost"
    source: Literal["federated", "federated-sign", "federated-lowrank", "public"] = "federated-lowrank"
    samples: Int = Field(default=32, ge=1)  # examples per client (federated) or from the public set (public)
    eta: Float = Field(default=1e-3, gt=0)  # eta_init: size of the approximated first Adam step, dW = -eta * sign(sum of grads)
    svd: Literal["lowrank", "exact"] = "lowrank"  # lowrank: torch.svd_lowrank
    oversample: Int = Field(default=8, ge=0)
    niter: Int = Field(default=2, ge=0)
    public_path: str | None = None  # public/proxy data for source = "public"; None = a held-out slice of the task
    batch_size: Int = Field(default=16, ge=1)
    # r' of the federated-lowrank factors; 0 = adapter.rank at <= 8 bits, 2 x adapter.rank for float factors
    lowrank_rank: Int = Field(default=0, ge=0)
    # wire format of the federated-lowrank factors: 32 | 16 (float) | 8 | 4 | 2 (quantised, rotated)
    lowrank_bits: Int = Field(default=8, ge=2, le=32)
    # wire format of the one-time B/A broadcast: 32 (float32) | 16 (float16) | 8 | 4 (per-column codes); below 32
    # every party re-orthonormalises the decoded bases the same way and the server re-fits R0 to them
    broadcast_bits: Literal[32, 16, 8, 4] = 4


class FederationConfig(Section):
    section = "federation"
    clients: Int = Field(default=3, ge=1)
    rounds: Int = Field(default=5, ge=1)
    fraction: Float = Field(default=1.0, gt=0, le=1)  # share of clients sampled per round
    # source: by data set (task.path a suite): source s lives on client s mod clients (see source_home_share)
    partition: Literal["iid", "dirichlet", "shards", "source"] = "dirichlet"
    dirichlet_alpha: Float = Field(default=0.5, gt=0)
    # what dirichlet and shards split by (and each client's test share follows): the class label, or the source
    # (sub-task or data set of a suite: a mixture of tasks split by task, as FedIT splits Dolly by category)
    split_by: Literal["label", "source"] = "label"
    shards_per_client: Int = Field(default=2, ge=1)
    # partition = "source": share of a source's examples kept on its home client; the rest spread uniformly
    source_home_share: Float = Field(default=0.8, gt=0, le=1)
    weighting: Literal["examples", "uniform"] = "examples"  # examples: p_i = n_i / sum n
    min_clients: Int = Field(default=1, ge=1)  # a round is skipped when fewer valid updates arrive
    # Bounded client influence (docs "Failure handling"; fedsb.core.validation). Each update's change from what was
    # broadcast is clipped to norm_factor x the round's (lower) median change and to max_change_norm.
    norm_factor: Float = Field(default=2.0, ge=0)  # clip changes above norm_factor x the round's median change (0 = off)
    # absolute cap on a change's norm; unset = the largest change local AdamW can make; 0 = off
    max_change_norm: Float | None = Field(default=None, ge=0)
    # a client's weight counts at most this x the median example count declared at setup (0 = off)
    max_examples_factor: Float = Field(default=2.0, ge=0)
    # clip each LoRA-SB init message, per layer, to this x the clients' median norm (0 = off)
    init_norm_factor: Float = Field(default=1.0, ge=0)


class TrainConfig(Section):
    section = "train"
    local_steps: Int = Field(default=10, ge=1)  # optimizer steps per client per round (ignored when local_epochs is set)
    local_epochs: Float | None = Field(default=None, gt=0)
    batch_size: Int = Field(default=16, ge=1)
    lr: Float | None = Field(default=None, gt=0)  # None = method/rank default (see Method.default_lr)
    head_lr: Float | None = Field(default=None, gt=0)  # None = same as lr for LoRA methods, 3e-3 for fed-sb
    weight_decay: Float = Field(default=0.0, ge=0)
    warmup_ratio: Float = Field(default=0.1, ge=0, le=1)  # of all planned steps (rounds x local steps)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: Float | None = Field(default=1.0, gt=0)
    threads: Int | None = Field(default=None, ge=1)  # torch threads; None = all cores


class EvalConfig(Section):
    section = "eval"
    every: Int = Field(default=1, ge=1)  # evaluate on the server every N rounds (and always after the last)
    initial: bool = True  # score the model after the init, before round 1 (row 0); false saves one evaluation
    batch_size: Int = Field(default=64, ge=1)
    mode: Literal["auto", "likelihood", "generate"] = "auto"  # causal LMs
    # Also score each client's model on its own test share (personal_* columns); auto = for personalised
    # methods (fedsa-lora), whose clients keep part of their model.
    personal: Literal["auto", "on", "off"] = "auto"


class DPConfig(Section):
    section = "dp"
    # sample: DP-SGD in each client | client: clip + server noise; docs "Differential privacy"
    mode: Literal["off", "sample", "client"] = "off"
    epsilon: Float | None = Field(default=None, gt=0)  # target/budget over the whole run; the run stops before exceeding it
    # None = 1 / (10 N): N = largest client's examples (sample) or clients (client)
    delta: Float | None = Field(default=None, gt=0, le=1)
    max_grad_norm: Float = Field(default=1.0, gt=0)  # clipping norm C: per example (sample) or per client update (client)
    noise_multiplier: Float | None = Field(default=None, ge=0)  # None = solved from epsilon over the whole planned run
    allow_loose_delta: bool = False  # accept a dp.delta above 1 / N (weaker: at 1/N one record may leak outright)
    accountant: Literal["rdp", "prv"] = "rdp"  # Opacus accountants
    init_noise_multiplier: Float | None = Field(default=None, ge=0)  # privatised LoRA-SB init; None = the training one
    # Noise and Poisson sampling are seeded from OS entropy, secret from the server. true = derive them from
    # `seed` so a simulation reproduces: NOT private (anyone with the config subtracts the noise), labelled so
    # in metrics/summary/terminal, refused over Flower.
    reproducible_noise: bool = False


class TrackingConfig(Section):
    section = "tracking"
    # Experiment trackers fed every metrics row (fedsb.io.tracking): tensorboard (event files in the run
    # directory's tensorboard/), mlflow, wandb; each needs its package installed. Off by default.
    backends: Names = Field(default_factory=list)


class RunConfig(Section):
    """The whole run: top-level keys and one table per section (TOML layout)."""

    method: str = "fed-sb"  # a name in fedsb.methods.METHODS (checked by fedsb.methods.get_method, not here)
    seed: Int = Field(default=0, ge=0, le=2**32 - 1)
    out: str | None = None  # run directory; None = runs/<method>-r<rank>-<timestamp>
    preset: str | None = None
    # The method's own options (e.g. ravan's heads); checked against the method's Options by fedsb.methods.
    method_options: dict[str, Any] = Field(default_factory=dict)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of every key (the TOML layout of the run directory's ``config.toml``)."""
        return self.model_dump()


SECTIONS: dict[str, type[Section]] = {
    name: f.annotation for name, f in RunConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
}
