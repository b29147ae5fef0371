"""Run configuration: nested dataclasses, loaded from TOML and command-line overrides, validated.

Every key is documented in the field comments and in README's "Configuration". Unknown keys, wrong
types and out-of-range values raise :class:`fedsb.errors.UsageError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedsb.errors import UsageError


@dataclass
class ModelConfig:
    name: str = "minilm"  # builtin alias (minilm, smollm2, tiny-bert, tiny-llama, tiny-gpt2), local dir or hub id
    kind: str = "auto"  # auto | classification | causal-lm (auto: encoders classify, decoders generate)
    dtype: str = "float32"  # base model dtype: float32 | bfloat16 | float16 (adapters are always float32)
    device: str = "cpu"  # cpu | cuda | auto
    targets: list[str] | None = None  # linear-layer name suffixes to adapt; None = per-architecture default
    head: list[str] | None = None  # trainable task-head modules; None = per-architecture default


@dataclass
class TaskConfig:
    name: str = "intent_recognition"  # builtin task name, or a format when `path` is given
    path: str | None = None  # local data file (BIG-bench task.json, JSON/JSONL)
    format: str = "auto"  # auto | bigbench | jsonl | commonsense | gsm8k | nli
    prompt_field: str = "prompt"  # generic JSONL
    response_field: str = "response"  # generic JSONL
    chat_template: str = "auto"  # causal LMs: auto (wrap the prompt in the tokenizer's chat template if it has one) | on | off
    max_length: int = 64
    test_fraction: float = 0.2  # held-out share when the data has no test split
    max_test_examples: int | None = None

    @property
    def label(self) -> str:
        """Display name: the builtin task, or the data file (its folder for BIG-bench's ``task.json``)."""
        if not self.path:
            return self.name
        p = Path(self.path)
        return p.parent.name if p.name == "task.json" else p.stem


@dataclass
class AdapterConfig:
    rank: int = 16
    alpha: float | None = None  # None = rank (scaling s = alpha / rank = 1, as LoRA-SB uses)


@dataclass
class InitConfig:
    source: str = "federated-lowrank"  # federated | federated-sign | federated-lowrank | public (README "Initialisation and its communication cost")
    samples: int = 32  # examples per client (federated) or from the public set (public)
    eta: float = 1e-3  # eta_init: size of the approximated first Adam step, dW = -eta * sign(sum of grads)
    svd: str = "lowrank"  # lowrank (torch.svd_lowrank) | exact
    oversample: int = 8
    niter: int = 2
    public_path: str | None = None  # public/proxy data for source = "public"; None = a held-out slice of the task
    batch_size: int = 16
    lowrank_rank: int = 0  # r' of the federated-lowrank factors; 0 = adapter.rank at <= 8 bits, 2 x adapter.rank for float factors
    lowrank_bits: int = 8  # wire format of the federated-lowrank factors: 32 | 16 (float) | 8 | 4 | 2 (quantised, rotated)


@dataclass
class FederationConfig:
    clients: int = 3
    rounds: int = 5
    fraction: float = 1.0  # share of clients sampled per round, in (0, 1]
    partition: str = "dirichlet"  # iid | dirichlet | shards
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    weighting: str = "examples"  # examples (p_i = n_i / sum n) | uniform
    min_clients: int = 1  # a round is skipped when fewer valid updates arrive
    # Bounded client influence (README "Failure handling"; fedsb.validation). Each update's change from what was
    # broadcast is clipped to norm_factor x the round's (lower) median change and to max_change_norm.
    norm_factor: float = 2.0  # clip changes above norm_factor x the round's median change (0 = off)
    max_change_norm: float | None = None  # absolute cap on a change's norm; unset = the largest change local AdamW can make; 0 = off
    max_examples_factor: float = 2.0  # a client's weight counts at most this x the median example count declared at setup (0 = off)
    init_norm_factor: float = 1.0  # clip each LoRA-SB init message, per layer, to this x the clients' median norm (0 = off)


@dataclass
class TrainConfig:
    local_steps: int = 10  # optimizer steps per client per round (ignored when local_epochs is set)
    local_epochs: float | None = None
    batch_size: int = 16
    lr: float | None = None  # None = method/rank default (see Method.default_lr)
    head_lr: float | None = None  # None = same as lr for LoRA methods, 3e-3 for fed-sb
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # of all planned steps (rounds x local steps)
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float | None = 1.0
    threads: int | None = None  # torch threads; None = all cores


@dataclass
class EvalConfig:
    every: int = 1  # evaluate on the server every N rounds (and always after the last)
    batch_size: int = 64
    mode: str = "auto"  # auto | likelihood | generate (causal LMs)


@dataclass
class DPConfig:
    mode: str = "off"  # off | sample (DP-SGD in each client) | client (clip + server noise); README "Differential privacy"
    epsilon: float | None = None  # target/budget over the whole run; the run stops before exceeding it
    delta: float | None = None  # None = 1 / (10 N): N = largest client's examples (sample) or clients (client)
    max_grad_norm: float = 1.0  # clipping norm C: per example (sample) or per client update (client)
    noise_multiplier: float | None = None  # None = solved from epsilon over the whole planned run
    allow_loose_delta: bool = False  # accept a dp.delta above 1 / N (weaker: at 1/N one record may leak outright)
    accountant: str = "rdp"  # rdp | prv (Opacus accountants)
    init_noise_multiplier: float | None = None  # privatised LoRA-SB init; None = the training noise multiplier
    # Noise and Poisson sampling are seeded from OS entropy, secret from the server. true = derive them from
    # `seed` so a simulation reproduces: NOT private (anyone with the config subtracts the noise), labelled so
    # in metrics/summary/terminal, refused over Flower.
    reproducible_noise: bool = False


@dataclass
class RunConfig:
    method: str = "fed-sb"
    seed: int = 0
    out: str | None = None  # run directory; None = runs/<method>-r<rank>-<timestamp>
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    init: InitConfig = field(default_factory=InitConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dp: DPConfig = field(default_factory=DPConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.kind": ("auto", "classification", "causal-lm"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.device": ("cpu", "cuda", "auto"),
    "task.format": ("auto", "bigbench", "jsonl", "commonsense", "gsm8k", "metamath", "nli"),
    "init.source": ("federated", "federated-sign", "federated-lowrank", "public"),
    "init.svd": ("lowrank", "exact"),
    "federation.partition": ("iid", "dirichlet", "shards"),
    "federation.weighting": ("examples", "uniform"),
    "train.schedule": ("cosine", "linear", "constant"),
    "eval.mode": ("auto", "likelihood", "generate"),
    "task.chat_template": ("auto", "on", "off"),
    "dp.mode": ("off", "sample", "client"),
    "dp.accountant": ("rdp", "prv"),
}

# (key, lower bound, upper bound, lower inclusive): numeric ranges checked by validate().
RANGES: list[tuple[str, float, float, bool]] = [
    ("adapter.rank", 1, float("inf"), True),
    ("adapter.alpha", 0, float("inf"), False),
    ("init.samples", 1, float("inf"), True),
    ("init.eta", 0, float("inf"), False),
    ("init.oversample", 0, float("inf"), True),
    ("init.niter", 0, float("inf"), True),
    ("init.batch_size", 1, float("inf"), True),
    ("init.lowrank_rank", 0, float("inf"), True),
    ("init.lowrank_bits", 2, 32, True),
    ("federation.clients", 1, float("inf"), True),
    ("federation.rounds", 1, float("inf"), True),
    ("federation.fraction", 0, 1, False),
    ("federation.dirichlet_alpha", 0, float("inf"), False),
    ("federation.shards_per_client", 1, float("inf"), True),
    ("federation.min_clients", 1, float("inf"), True),
    ("federation.norm_factor", 0, float("inf"), True),
    ("federation.max_examples_factor", 0, float("inf"), True),
    ("federation.max_change_norm", 0, float("inf"), True),
    ("federation.init_norm_factor", 0, float("inf"), True),
    ("seed", 0, 2**32 - 1, True),
    ("train.local_steps", 1, float("inf"), True),
    ("train.local_epochs", 0, float("inf"), False),
    ("train.batch_size", 1, float("inf"), True),
    ("train.lr", 0, float("inf"), False),
    ("train.head_lr", 0, float("inf"), False),
    ("train.weight_decay", 0, float("inf"), True),
    ("train.warmup_ratio", 0, 1, True),
    ("train.max_grad_norm", 0, float("inf"), False),
    ("train.threads", 1, float("inf"), True),
    ("task.max_length", 8, float("inf"), True),
    ("task.test_fraction", 0, 1, False),
    ("task.max_test_examples", 1, float("inf"), True),
    ("eval.every", 1, float("inf"), True),
    ("eval.batch_size", 1, float("inf"), True),
    ("dp.epsilon", 0, float("inf"), False),
    ("dp.delta", 0, 1, False),
    ("dp.max_grad_norm", 0, float("inf"), False),
    ("dp.noise_multiplier", 0, float("inf"), True),
    ("dp.init_noise_multiplier", 0, float("inf"), True),
]

# Short command-line flags for the most common keys.
ALIASES: dict[str, str] = {
    "method": "method",
    "seed": "seed",
    "out": "out",
    "rank": "adapter.rank",
    "clients": "federation.clients",
    "rounds": "federation.rounds",
    "fraction": "federation.fraction",
    "model": "model.name",
    "task": "task.name",
    "data": "task.path",
    "lr": "train.lr",
    "steps": "train.local_steps",
    "epsilon": "dp.epsilon",
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(key), options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except UsageError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            else:
                raise UsageError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                raise UsageError(f"{key} = {value} is too large; use a 64-bit integer")
            return value
        raise UsageError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise UsageError(f"{key} = {value} is too large for a number") from None
        raise UsageError(f"{key} must be a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{key} must be a string, got {type(value).__name__} {value!r}")
    raise UsageError(f"{key}: unsupported type")


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a config from a nested dict (TOML layout), rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UsageError("config must be a table of keys")
    cfg = RunConfig()
    top_hints = _hints(RunConfig)
    sections = [f.name for f in fields(RunConfig) if dataclasses.is_dataclass(top_hints[f.name])]
    all_keys = [f.name for f in fields(RunConfig)]
    for key, value in data.items():
        if key not in all_keys:
            raise UsageError(f"unknown config key {key!r}{_did_you_mean(key, all_keys)}; see README 'Configuration'")
        if key in sections:
            if not isinstance(value, dict):
                raise UsageError(f"[{key}] must be a table, got {type(value).__name__}")
            sec = getattr(cfg, key)
            hints = _hints(type(sec))
            names = [f.name for f in fields(sec)]
            for k, v in value.items():
                if k not in names:
                    raise UsageError(
                        f"unknown config key '{key}.{k}'{_did_you_mean(k, names)}; see README 'Configuration'"
                    )
                setattr(sec, k, _coerce(f"{key}.{k}", v, hints[k]))
        else:
            setattr(cfg, key, _coerce(key, value, top_hints[key]))
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} not found; pass an existing .toml file or no config for the defaults")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {str(p)!r} is not valid TOML ({e}); fix the syntax") from None


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (``3``, ``0.5``, ``true``, ``[1, 2]``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


_TOP_KEYS = [f.name for f in fields(RunConfig)]
_DOTTED_KEYS = [f"{f.name}.{g.name}" for f in fields(RunConfig) if dataclasses.is_dataclass(f.default_factory)  # type: ignore[arg-type]
                for g in fields(f.default_factory)]  # type: ignore[arg-type]


def overrides_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("rank", "8"), ("dp.epsilon", "1")]`` -> ``{"adapter": {"rank": 8}, "dp": {"epsilon": 1}}``."""
    out: dict[str, Any] = {}
    for key, raw in pairs:
        dotted = ALIASES.get(key, key).replace("-", "_")
        parts = dotted.split(".")
        if len(parts) == 1 and parts[0] not in _TOP_KEYS:
            raise UsageError(f"unknown option --{key}{_did_you_mean(key, list(ALIASES) + _DOTTED_KEYS)}; see `fedsb run --help`")
        if len(parts) > 2:
            raise UsageError(f"override --{key}: keys have at most one dot (section.key)")
        value: Any = raw if parts[-1] in ("name", "path", "out", "method") else parse_value(raw)
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _get(cfg: RunConfig, dotted: str) -> Any:
    sec, _, key = dotted.partition(".")
    return getattr(getattr(cfg, sec), key) if key else getattr(cfg, sec)


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks that need no model or data (those come later, with their own messages)."""
    from fedsb.methods import METHODS

    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}{_did_you_mean(cfg.method, list(METHODS))}; choose one of: {', '.join(METHODS)}")
    for key, choices in CHOICES.items():
        v = _get(cfg, key)
        if v not in choices:
            raise UsageError(f"{key} = {v!r} is not valid{_did_you_mean(str(v), list(choices))}; choose one of: {', '.join(choices)}")
    for key, lo, hi, lo_incl in RANGES:
        v = _get(cfg, key)
        if v is None:
            continue
        if v != v or v in (float("inf"), float("-inf")) or (v < lo if lo_incl else v <= lo) or v > hi:  # v != v: NaN
            lo_s = f">= {lo:g}" if lo_incl else f"> {lo:g}"
            hi_s = "" if hi == float("inf") else f" and <= {hi:g}"
            raise UsageError(f"{key} = {v!r} is out of range; it must be {lo_s}{hi_s}")
    if cfg.federation.min_clients > cfg.federation.clients:
        raise UsageError(
            f"federation.min_clients = {cfg.federation.min_clients} exceeds federation.clients = {cfg.federation.clients}; lower it"
        )
    per_round = max(1, round(cfg.federation.fraction * cfg.federation.clients))
    if cfg.federation.min_clients > per_round:
        raise UsageError(
            f"federation.min_clients = {cfg.federation.min_clients} exceeds the {per_round} clients sampled per round "
            "(fraction x clients), so every round would be skipped; lower it or raise federation.fraction"
        )
    if cfg.dp.mode != "off" and cfg.dp.epsilon is None and cfg.dp.noise_multiplier is None:
        raise UsageError(f"dp.mode = {cfg.dp.mode!r} needs dp.epsilon (a privacy budget) or dp.noise_multiplier")
    return cfg


def resolve(config_path: str | None, overrides: list[tuple[str, str]], presets: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Defaults <- preset <- config file <- command-line overrides, then validation."""
    data: dict[str, Any] = {}
    file_data = load_toml(config_path) if config_path else {}
    over = overrides_to_dict(overrides)
    preset = over.get("preset", file_data.get("preset"))
    if preset is not None:
        presets = presets or {}
        if not isinstance(preset, str):
            raise UsageError(f"preset must be a name (a string), got {type(preset).__name__}; see `fedsb presets`")
        if preset not in presets:
            raise UsageError(f"unknown preset {preset!r}{_did_you_mean(str(preset), list(presets))}; see `fedsb presets`")
        data = merge(data, {k: v for k, v in presets[preset].items() if k != "description"})  # description: for `fedsb presets`
    data = merge(merge(data, file_data), over)
    if isinstance(data.get("dp"), dict) and "epsilon" in data["dp"] and "mode" not in data["dp"]:
        data["dp"]["mode"] = "sample"  # `--dp.epsilon 1` alone turns sample-level DP on
    dp_mode = data.get("dp", {}).get("mode") if isinstance(data.get("dp"), dict) else None
    init = data.get("init")
    if dp_mode == "client" and not (isinstance(init, dict) and "source" in init):
        # Client-level DP can only privatise dense gradient sums; use them unless the user chose a source.
        data["init"] = {**(init if isinstance(init, dict) else {}), "source": "federated"}
    return validate(from_dict(data))
