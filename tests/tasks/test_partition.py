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


def test_split_by_source_keys_on_the_sub_task_and_refuses_untagged_examples() -> None:
    from fedsb.errors import UsageError
    from fedsb.tasks.base import Example
    from fedsb.tasks.partition import split_key

    ex = [Example(text=f"q{i}", label=i % 7, meta={"source": ["mul", "add", "sub"][i % 3]}) for i in range(60)]
    by_source = split_key("source", ex)
    assert [by_source(e) for e in ex[:3]] == [1, 0, 2]  # index in name order: add, mul, sub
    assert [split_key("label", ex)(e) for e in ex[:3]] == [0, 1, 2]
    with pytest.raises(UsageError, match="needs examples tagged with their source"):
        split_key("source", [Example(text="x", label=0)])
    # shards over 3 sources and 3 clients with one shard each: each client holds a single operation
    parts = partition_indices([by_source(e) for e in ex], 3, "shards", 0, 0.5, 1)
    assert sorted(len({by_source(ex[i]) for i in p}) for p in parts) == [1, 1, 1]


def test_split_by_applies_only_to_the_skewed_schemes() -> None:
    from fedsb.tasks.partition import effective_split_by

    assert effective_split_by("dirichlet", "source") == "source"
    assert effective_split_by("shards", "source") == "source"
    assert effective_split_by("iid", "source") == "label"
    assert effective_split_by("dirichlet", "label") == "label"


def test_test_shares_follow_the_sources_a_client_trained_on() -> None:
    from fedsb.core.personal import client_test_shares
    from fedsb.tasks.base import Example
    from fedsb.tasks.partition import split_key

    src = ["add", "mul"]
    train = [Example(text=f"t{i}", label=0, meta={"source": src[i % 2]}) for i in range(40)]
    test = [Example(text=f"e{i}", label=0, meta={"source": src[i % 2]}) for i in range(20)]
    shards = [[e for e in train if e.meta["source"] == "add"], [e for e in train if e.meta["source"] == "mul"]]
    shares = client_test_shares(test, shards, 0, split_key("source", train))
    assert [{e.meta["source"] for e in s} for s in shares] == [{"add"}, {"mul"}]
    # by label (all 0) the sources would mix: the key is what makes the shares follow the split
    mixed = client_test_shares(test, shards, 0)
    assert any(len({e.meta["source"] for e in s}) == 2 for s in mixed)
