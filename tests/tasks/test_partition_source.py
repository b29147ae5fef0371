"""partition = "source": each client holds mostly its home data set(s), deterministically, every example once."""

from __future__ import annotations

from collections import Counter

import pytest

from fedsb.errors import UsageError
from fedsb.tasks.partition import partition_indices

SOURCES = ["arc", "boolq", "obqa", "piqa", "siqa", "wino"]


def suite_sources(per_source: int, names: list[str]) -> list[str]:
    # interleaved, as the loader's shuffled union
    return [names[i % len(names)] for i in range(per_source * len(names))]


def home_shares(parts: list[list[int]], sources: list[str]) -> list[float]:
    names = sorted(set(sources))
    k = len(parts)
    return [sum(1 for i in p if names.index(sources[i]) % k == c) / len(p) for c, p in enumerate(parts)]


@pytest.mark.parametrize(("clients", "names"), [(3, SOURCES), (3, SOURCES[:3]), (2, SOURCES[:4]), (6, SOURCES)])
def test_each_client_holds_mostly_its_home_sources(clients: int, names: list[str]) -> None:
    sources = suite_sources(200, names)
    labels = [0] * len(sources)
    parts = partition_indices(labels, clients, "source", seed=4, sources=sources, home_share=0.8)
    assert sorted(i for p in parts for i in p) == list(range(len(sources)))  # every example exactly once
    shares = home_shares(parts, sources)
    assert min(shares) >= 0.7, shares
    assert max(shares) <= 0.9, shares  # 20% leaves home: not a pure split by source
    # source s's home is client s mod k (sorted names): the biggest source of each client is a home one
    for c, p in enumerate(parts):
        top = Counter(sources[i] for i in p).most_common(1)[0][0]
        assert sorted(names).index(top) % clients == c
    assert parts == partition_indices(labels, clients, "source", seed=4, sources=sources, home_share=0.8)
    assert parts != partition_indices(labels, clients, "source", seed=5, sources=sources, home_share=0.8)


def test_home_share_is_what_is_measured() -> None:
    sources = suite_sources(500, SOURCES[:3])  # 3 sources, 3 clients: one home source each
    for share in (0.5, 0.95):
        parts = partition_indices([0] * len(sources), 3, "source", 0, sources=sources, home_share=share)
        assert all(abs(s - share) < 0.05 for s in home_shares(parts, sources)), (share, home_shares(parts, sources))
        # what leaves home is spread uniformly over the other clients
        arc_away = Counter(c for c, p in enumerate(parts) for i in p if sources[i] == "arc" and c != 0)
        assert abs(arc_away[1] - arc_away[2]) < 0.25 * (arc_away[1] + arc_away[2])
    whole = partition_indices([0] * len(sources), 3, "source", 0, sources=sources, home_share=1.0)
    assert [{sources[i] for i in p} for p in whole] == [{"arc"}, {"boolq"}, {"obqa"}]


def test_examples_without_a_source_are_refused_in_one_line() -> None:
    with pytest.raises(UsageError) as err:
        partition_indices([0, 1, 0, 1], 2, "source", 0, sources=["arc", None, "arc", "boolq"])
    assert "folder of data folders" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="partition = 'source'"):
        partition_indices([0, 1, 0, 1], 2, "source", 0)


def test_a_client_left_empty_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="got no examples with 'source'"):
        partition_indices([0] * 10, 3, "source", 0, sources=["arc"] * 5 + ["boolq"] * 5, home_share=1.0)
