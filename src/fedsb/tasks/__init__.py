"""Task loaders: turn a builtin name or a data file into train/test examples."""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError
from fedsb.tasks.base import Example, TaskData, TaskKind
from fedsb.tasks.bigbench import read_bigbench

BUILTIN_TASKS = {
    "intent_recognition": "data/bigbench/intent_recognition/task.json",
    "2_digit_addition": "data/bigbench/arithmetic_2_digit_addition/task.json",  # the LLM preset's task
}


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("fedsb").joinpath(BUILTIN_TASKS[name])))


def split_train_test(examples: list[Example], test_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Stratified-by-label held-out split, deterministic given ``seed``."""
    rng = random.Random(seed)
    by_label: dict[int | None, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    train, test = [], []
    for key in sorted(by_label, key=lambda k: -1 if k is None else k):
        group = by_label[key][:]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        test += group[:n_test]
        train += group[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)  # so that a max_test_examples prefix is not a single label
    return train, test


def load_task(cfg: TaskConfig, kind: TaskKind, seed: int = 0) -> TaskData:
    """Load the configured task for a classifier or a causal LM."""
    if cfg.path is None and cfg.name in BUILTIN_TASKS:
        path = builtin_path(cfg.name)
    elif cfg.path is not None:
        path = Path(cfg.path)
        if not path.exists():
            raise FedsbError(f"data file {str(path)!r} not found; check task.path")
    else:
        from fedsb.tasks import registry_extra

        return registry_extra.load(cfg, kind, seed)
    if kind == "causal-lm" or (cfg.format not in ("auto", "bigbench")):
        from fedsb.tasks import registry_extra

        return registry_extra.load(cfg, kind, seed)
    examples, labels, _ = read_bigbench(path)
    if any(e.label is None for e in examples):
        raise FedsbError(f"{path} is a generative task; a classifier needs multiple choice (target_scores)")
    train, test = split_train_test(examples, cfg.test_fraction, seed)
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    return TaskData(name=cfg.label, kind="classification", train=train, test=test, labels=labels)


__all__ = ["Example", "TaskData", "load_task", "split_train_test"]
