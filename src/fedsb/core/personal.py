"""Per-client evaluation: each client's own test share, and the columns a metrics row reports from it.

A client's *test share* is a slice of the common test set drawn with the client's own label mix: the test
examples of each label are dealt to the clients in proportion to how many training examples of that label
each holds (largest remainders, after a seeded shuffle). The shares partition the test set, so under a
non-IID split every client is scored on data that looks like its own. Tasks without labels are dealt in
equal parts. Both engines use it: the simulator for every client in-process, a Flower node for itself.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable

from fedsb.tasks.base import Example


def client_test_shares(test: list[Example], shards: list[list[Example]], seed: int,
                       key: Callable[[Example], int | None] | None = None) -> list[list[Example]]:
    """The test set split over the clients, each share following its client's training label mix.

    ``key`` gives an example's "label" (default: its class label; :func:`fedsb.tasks.partition.split_key` for a
    split by source, so that a client's share follows the sources it trained on)."""
    key = key or (lambda e: e.label)
    k = len(shards)
    out: list[list[Example]] = [[] for _ in range(k)]
    by_label: dict[int | None, list[Example]] = defaultdict(list)
    for e in test:
        by_label[key(e)].append(e)
    counts = [Counter(key(e) for e in shard) for shard in shards]
    rng = random.Random(f"{seed}-test-shares")
    for label in sorted(by_label, key=lambda x: (x is None, x if x is not None else 0)):
        pool = list(by_label[label])
        rng.shuffle(pool)
        held = [c[label] if label is not None else 1 for c in counts]
        if sum(held) == 0:  # a label no client trained on: deal it evenly
            held = [1] * k
        total = sum(held)
        exact = [len(pool) * h / total for h in held]
        take = [int(x) for x in exact]
        order = sorted(range(k), key=lambda i: (-(exact[i] - take[i]), i))
        for i in order[: len(pool) - sum(take)]:
            take[i] += 1
        start = 0
        for i in range(k):
            out[i].extend(pool[start : start + take[i]])
            start += take[i]
    return out


def personal_columns(results: list[tuple[int, dict[str, float]]], prefix: str = "personal_") -> dict[str, float]:
    """Row columns from per-client results ``(test examples, metrics)``: for each metric its example-weighted
    mean (``personal_<m>``), plain mean over clients (``_mean``) and, for accuracy, the worst client (``_min``)."""
    scored = [(n, m) for n, m in results if n > 0]
    if not scored:
        return {}
    total = sum(n for n, _ in scored)
    cols: dict[str, float] = {}
    for key in scored[0][1]:
        vals = [(n, float(m[key])) for n, m in scored if key in m]
        cols[f"{prefix}{key}"] = sum(n * v for n, v in vals) / total
        cols[f"{prefix}{key}_mean"] = sum(v for _, v in vals) / len(vals)
        if key == "accuracy":
            cols[f"{prefix}{key}_min"] = min(v for _, v in vals)
    return cols


def personalised_metrics(common: list[tuple[int, dict[str, float]]], own: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """A personalised method's row: each client's own model on the common test set (``common``: weighted by the
    client's training examples; ``<m>`` and, for accuracy, the worst client ``_min``) and on its own test
    share (``own``: :func:`personal_columns`)."""
    out = {k: v for k, v in personal_columns(common, prefix="").items() if not k.endswith("_mean")}
    return {**out, **personal_columns(own)}
