"""Split training examples over clients with flwr-datasets' partitioners (IID, Dirichlet-by-label, shards)."""

from __future__ import annotations

import logging

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

from fedsb.errors import UsageError


def partition_indices(
    labels: list[int], num_clients: int, scheme: str, seed: int, alpha: float = 0.5, shards_per_client: int = 2
) -> list[list[int]]:
    """Indices of the examples each client holds. Every client gets at least one example."""
    n = len(labels)
    if num_clients > n:
        raise UsageError(f"federation.clients = {num_clients} exceeds the {n} training examples; use fewer clients")
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
        raise UsageError(f"unknown partition scheme {scheme!r}; choose iid, dirichlet or shards")
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
    empty = [i for i, o in enumerate(out) if not o]
    if empty:
        raise UsageError(f"clients {empty} got no examples with {scheme!r}; use fewer clients or a larger dirichlet_alpha")
    return out
