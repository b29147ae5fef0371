"""Client splits: every example lands on exactly one client, deterministically; label skew where asked."""

from __future__ import annotations

import random

import pytest

from fedsb.errors import FedsbError
from fedsb.tasks.partition import partition_indices

LABELS = [random.Random(i).randrange(7) for i in range(300)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_example_once_and_is_deterministic(scheme: str) -> None:
    parts = partition_indices(LABELS, 4, scheme, seed=3, alpha=0.3)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(LABELS)))
    assert parts == partition_indices(LABELS, 4, scheme, seed=3, alpha=0.3)


def test_dirichlet_and_shards_skew_labels_but_iid_does_not() -> None:
    def max_share(parts: list[list[int]]) -> float:
        shares = []
        for p in parts:
            counts = [sum(1 for i in p if LABELS[i] == c) for c in range(7)]
            shares.append(max(counts) / len(p))
        return max(shares)

    assert max_share(partition_indices(LABELS, 3, "iid", 0)) < 0.3
    assert max_share(partition_indices(LABELS, 3, "dirichlet", 0, alpha=0.1)) > 0.4
    assert max_share(partition_indices(LABELS, 3, "shards", 0, shards_per_client=1)) > 0.4


def test_more_clients_than_examples_is_a_clear_error() -> None:
    with pytest.raises(FedsbError, match="exceeds the 5 training examples"):
        partition_indices([0, 1, 0, 1, 0], 6, "iid", 0)
