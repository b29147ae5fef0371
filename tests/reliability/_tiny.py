"""Tiny run configs for the reliability tests (tiny random models, 1-2 local steps)."""

from __future__ import annotations

from typing import Any

from fedsb.config import RunConfig, from_dict, merge, validate

METHOD_NAMES = ("fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora", "fedsvd", "ravan", "rolora", "fedsa-lora")


def tiny_cfg(method: str = "fed-sb", model: str = "tiny-bert", **over: Any) -> RunConfig:
    base: dict[str, Any] = {
        "method": method,
        "seed": 0,
        "model": {"name": model, "kind": "classification"},
        "adapter": {"rank": 4},
        "init": {"samples": 8, "batch_size": 8},
        "federation": {"clients": 3, "rounds": 3, "partition": "iid"},
        "train": {"local_steps": 2, "batch_size": 4, "threads": 1},
        "task": {"max_length": 24, "max_test_examples": 16},
        "eval": {"batch_size": 16},
    }
    return validate(from_dict(merge(base, over)))
