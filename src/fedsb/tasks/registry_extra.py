"""Causal-LM and other-format task loaders (commonsense, GSM8K, NLI, JSONL). Filled in by the causal-LM work."""

from __future__ import annotations

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError
from fedsb.tasks.base import TaskData, TaskKind


def load(cfg: TaskConfig, kind: TaskKind, seed: int) -> TaskData:
    raise FedsbError(f"task {cfg.name!r} (format {cfg.format!r}) for a {kind} model is not supported yet")
