"""Building a :class:`RunConfig`: defaults <- preset <- TOML file <- ``--section.key value`` overrides.

Field types, choices and ranges live in :mod:`fedsb.config.schema`; this module adds what spans keys
(``validate``) and the rules of the command line (aliases, ``--dp.epsilon`` alone turning DP on). The
method name is checked by :func:`fedsb.methods.get_method`, which the entry points call right after this.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsb.config.messages import did_you_mean, one_line
from fedsb.config.schema import SECTIONS, RunConfig
from fedsb.errors import UsageError

# Short command-line flags for the most common keys.
ALIASES: dict[str, str] = {
    "method": "method", "seed": "seed", "out": "out", "rank": "adapter.rank", "clients": "federation.clients",
    "rounds": "federation.rounds", "fraction": "federation.fraction", "model": "model.name", "task": "task.name",
    "data": "task.path", "lr": "train.lr", "steps": "train.local_steps", "epsilon": "dp.epsilon",
}

_TOP_KEYS = list(RunConfig.model_fields)
_DOTTED_KEYS = [f"{s}.{k}" for s, model in SECTIONS.items() for k in model.model_fields]


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a config from a nested dict (TOML layout), rejecting unknown keys, wrong types and bad values."""
    if not isinstance(data, dict):
        raise UsageError("config must be a table of keys")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UsageError(one_line(e, RunConfig, data)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """The nested dict of a TOML file, or a one-line error for a missing or malformed one."""
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
    """``override`` on top of ``base``, table by table (neither is modified)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def overrides_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("rank", "8"), ("dp.epsilon", "1")]`` -> ``{"adapter": {"rank": 8}, "dp": {"epsilon": 1}}``."""
    out: dict[str, Any] = {}
    for key, raw in pairs:
        dotted = ALIASES.get(key, key).replace("-", "_")
        parts = dotted.split(".")
        if len(parts) == 1 and parts[0] not in _TOP_KEYS:
            raise UsageError(f"unknown option --{key}{did_you_mean(key, list(ALIASES) + _DOTTED_KEYS)}; see `fedsb run --help`")
        if len(parts) > 2:
            raise UsageError(f"override --{key}: keys have at most one dot (section.key)")
        value: Any = raw if parts[-1] in ("name", "path", "out", "method") else parse_value(raw)
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out


def validate(cfg: RunConfig) -> RunConfig:
    """Checks across keys that need no model or data (those come later, with their own messages).

    Every single key was checked when it was set; it is checked again here for a config built without
    validation (``model_construct``, ``model_copy(update=...)``).
    """
    try:
        RunConfig.model_validate(cfg.model_dump())
    except ValidationError as e:
        raise UsageError(one_line(e, RunConfig)) from None
    fed = cfg.federation
    if fed.min_clients > fed.clients:
        raise UsageError(f"federation.min_clients = {fed.min_clients} exceeds federation.clients = {fed.clients}; lower it")
    per_round = max(1, round(fed.fraction * fed.clients))
    if fed.min_clients > per_round:
        raise UsageError(
            f"federation.min_clients = {fed.min_clients} exceeds the {per_round} clients sampled per round "
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
            raise UsageError(f"unknown preset {preset!r}{did_you_mean(preset, list(presets))}; see `fedsb presets`")
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
