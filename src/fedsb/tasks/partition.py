"""Split training examples over clients: flwr-datasets' partitioners (IID, Dirichlet-by-label, shards) and a
by-source split (``source``) for suites of data sets. Dirichlet and shards split by the class label or, with
``federation.split_by = "source"``, by each example's source (:func:`split_key`).

``source`` is hand-written: flwr-datasets has no "home share" partitioner. Its NaturalIdPartitioner and
GroupedNaturalIdPartitioner give whole ids to partitions (no mixing, one partition per id or group),
PathologicalPartitioner gives each partition a fixed number of classes, and DistributionPartitioner needs
the number of partitions to be a multiple of the number of labels.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

from fedsb.errors import UsageError
from fedsb.tasks.base import Example


def partition_indices(
    labels: list[int], num_clients: int, scheme: str, seed: int, alpha: float = 0.5, shards_per_client: int = 2,
    sources: Sequence[str | None] | None = None, home_share: float = 0.8,
) -> list[list[int]]:
    """Indices of the examples each client holds. Every client gets at least one example.

    ``sources`` (each example's source data set) and ``home_share`` serve ``scheme = "source"`` only."""
    n = len(labels)
    if num_clients > n:
        raise UsageError(f"federation.clients = {num_clients} exceeds the {n} training examples; use fewer clients")
    if scheme == "source":
        return _check_nonempty(source_partition(sources, num_clients, seed, home_share), scheme)
    ds = Dataset.from_dict({"label": labels, "idx": list(range(n))})
    if scheme == "iid":
        part = IidPartitioner(num_partitions=num_clients)
    elif scheme == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=alpha, min_partition_size=1, self_balancing=False,
            shuffle=True, seed=seed,
        )
    elif scheme == "shards":
        num_shards = num_clients * shards_per_client
        if num_shards > n:
            raise UsageError(f"{num_shards} shards for {n} examples; lower federation.shards_per_client or clients")
        part = ShardPartitioner(
            num_partitions=num_clients, partition_by="label", num_shards_per_partition=shards_per_client,
            shuffle=True, seed=seed,
        )
    else:
        raise UsageError(f"unknown partition scheme {scheme!r}; choose iid, dirichlet, shards or source")
    part.dataset = ds
    logging.getLogger("flwr_datasets").setLevel(logging.ERROR)
    try:
        out = [sorted(part.load_partition(i)["idx"]) for i in range(num_clients)]
    except ValueError as e:
        raise UsageError(f"cannot split {n} examples over {num_clients} clients with {scheme!r}: {e}") from None
    if scheme == "shards":
        # ShardPartitioner drops the n mod num_shards remainder; hand it out in turn so no data is lost.
        used = {i for part in out for i in part}
        for j, i in enumerate(i for i in range(n) if i not in used):
            out[j % num_clients].append(i)
        out = [sorted(p) for p in out]
    return _check_nonempty(out, scheme)


def effective_split_by(partition: str, split_by: str) -> str:
    """What a ``partition`` scheme actually splits by: ``split_by`` for the skewed schemes (``dirichlet``,
    ``shards``); every other scheme ignores it, and client test shares then follow the label."""
    return split_by if partition in ("dirichlet", "shards") else "label"


def split_key(split_by: str, examples: Sequence[Example]) -> Callable[[Example], int | None]:
    """What ``dirichlet`` and ``shards`` split by, and what a client's test share follows: the class label
    (``split_by = "label"``), or the index of the example's source (sub-task or data set of a suite) among the
    sources of ``examples`` in name order (``"source"``; an unknown source maps to None)."""
    if split_by == "label":
        return lambda e: e.label
    if split_by != "source":
        raise UsageError(f"unknown federation.split_by {split_by!r}; choose label or source")
    if not examples or any(e.meta.get("source") is None for e in examples):
        raise UsageError("federation.split_by = 'source' needs examples tagged with their source: point task.path at a "
                         "suite (a folder of data folders, or a BIG-bench task with sub-tasks), or split by label")
    index = {name: i for i, name in enumerate(sorted({str(e.meta["source"]) for e in examples}))}
    return lambda e: index.get(str(e.meta.get("source")))


def _check_nonempty(out: list[list[int]], scheme: str) -> list[list[int]]:
    empty = [i for i, o in enumerate(out) if not o]
    if empty:
        fix = "a lower federation.source_home_share" if scheme == "source" else "a larger dirichlet_alpha"
        raise UsageError(f"clients {empty} got no examples with {scheme!r}; use fewer clients or {fix}")
    return out


def source_partition(sources: Sequence[str | None] | None, num_clients: int, seed: int, home_share: float) -> list[list[int]]:
    """Non-IID by data set: the s-th source (sorted by name) has home client ``s mod num_clients``; each example
    stays home with probability ``home_share``, else goes to one of the other clients, chosen uniformly.

    A client's share of home-source examples is about ``home_share`` when the sources are of similar size
    (``task.max_train_per_source`` evens them out); a large source spills more onto its neighbours."""
    if not sources or any(s is None for s in sources):
        raise UsageError("federation.partition = 'source' needs examples tagged with their data set: point task.path at a "
                         "folder of data folders (one per source), or choose iid, dirichlet or shards")
    if not 0 < home_share <= 1:
        raise UsageError(f"federation.source_home_share = {home_share} is out of range; it must be > 0 and <= 1")
    home = {s: i % num_clients for i, s in enumerate(sorted({str(s) for s in sources}))}
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(num_clients)]
    for i, s in enumerate(sources):
        h = home[str(s)]
        # Two draws per example whatever the outcome, so one example's fate never shifts the others' draws.
        stay, other = rng.random() < home_share, rng.randrange(num_clients - 1) if num_clients > 1 else 0
        out[h if stay or num_clients == 1 else other + (other >= h)].append(i)
    return out
