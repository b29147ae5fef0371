"""Builders shared by tests: tiny federations on the embedded task."""

from __future__ import annotations

from typing import Any

from fedsb.config import RunConfig, from_dict, merge, validate
from fedsb.core.federation import Federation, build_federation

TINY_KIND = {"tiny-bert": "classification", "tiny-llama": "classification", "tiny-gpt2": "classification"}


def tiny_config(model: str = "tiny-bert", method: str = "fed-sb", **over: Any) -> RunConfig:
    base: dict[str, Any] = {
        "method": method,
        "seed": 0,
        "model": {"name": model, "kind": TINY_KIND.get(model, "auto")},
        "adapter": {"rank": 4},
        "init": {"samples": 8, "batch_size": 8},
        "federation": {"clients": 3, "rounds": 2, "partition": "dirichlet", "dirichlet_alpha": 1.0},
        "train": {"local_steps": 2, "batch_size": 4, "threads": 1},
        "task": {"max_length": 24, "max_test_examples": 16},
        "eval": {"batch_size": 16},
    }
    return validate(from_dict(merge(base, over)))


def tiny_federation(model: str = "tiny-bert", method: str = "fed-sb", **over: Any) -> Federation:
    return build_federation(tiny_config(model, method, **over))
