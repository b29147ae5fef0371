"""Run configuration: a typed pydantic schema (:mod:`.schema`), loaded from TOML and overrides (:mod:`.load`).

The bottom layer of fedsb: it imports nothing of fedsb but :mod:`fedsb.errors`. Every key is documented by
its field's comment and in docs/configuration.md. Unknown keys, wrong types and out-of-range values raise
:class:`fedsb.errors.UsageError` with a one-line message (:mod:`.messages`).
"""

from fedsb.config.load import (
    ALIASES,
    from_dict,
    load_toml,
    merge,
    overrides_to_dict,
    parse_value,
    resolve,
    validate,
)
from fedsb.config.messages import did_you_mean
from fedsb.config.schema import (
    SECTIONS,
    AdapterConfig,
    DPConfig,
    EvalConfig,
    FederationConfig,
    InitConfig,
    ModelConfig,
    RunConfig,
    Section,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "ALIASES", "SECTIONS", "AdapterConfig", "DPConfig", "EvalConfig", "FederationConfig", "InitConfig", "ModelConfig",
    "RunConfig", "Section", "TaskConfig", "TrainConfig", "did_you_mean", "from_dict", "load_toml", "merge",
    "overrides_to_dict", "parse_value", "resolve", "validate",
]
