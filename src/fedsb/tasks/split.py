"""The deterministic train/test split used when a task ships no test split."""

from __future__ import annotations

import random

from fedsb.tasks.base import Example


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
