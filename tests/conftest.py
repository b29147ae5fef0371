"""Shared fixtures: offline, single-threaded, deterministic; the path to ../shared/data when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsb.environment import apply_offline_env  # the same offline, no-telemetry settings as the CLI

apply_offline_env()

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is absent (e.g. a clone without the shared folder)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: real-data smoke tests need ../shared/data beside the repo")
    return SHARED_DATA


LONGEST_FIRST = ("test_llm_quickstart_real_smollm2", "test_default_quickstart_reaches_080",
                 "test_two_supernodes_two_rounds_of_fed_sb", "test_run_simulation_equals_the_simulator")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the longest end-to-end tests first, then the other slow ones, so that with ``-n 2
    --maxschedchunk 2`` they run side by side on both workers instead of ending the run."""

    def rank(item: pytest.Item) -> int:
        name = getattr(item, "originalname", item.name)
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) if item.get_closest_marker("slow") else len(LONGEST_FIRST) + 1

    items.sort(key=rank)
