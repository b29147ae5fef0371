"""The per-client accountants survive a checkpoint: an interrupted-and-resumed DP run spends the same epsilon."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsb.io.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from fedsb.privacy import make_dp_trainer
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation

DP = {"mode": "sample", "epsilon": 2.0, "reproducible_noise": True}  # bit-identity needs seed-derived noise


def dp_sim() -> Simulator:
    fed = tiny_federation(dp=DP)
    return Simulator(fed.cfg, fed=fed, trainer=make_dp_trainer(fed), progress=False)


def test_resumed_dp_run_matches_uninterrupted(tmp_path: Path) -> None:
    full = dp_sim().run()

    first = dp_sim()

    def stop_after_one(row: dict) -> None:
        save_checkpoint(tmp_path, first)
        if row["round"] == 1:
            raise KeyboardInterrupt

    first.on_round = stop_after_one
    with pytest.raises(KeyboardInterrupt):
        first.run()
    second = dp_sim()
    start = restore_checkpoint(second, load_checkpoint(tmp_path))
    assert start == 2 and second.trainer.epsilons() == first.trainer.epsilons()
    resumed = second.run(start_round=start)
    assert resumed.rows[-1]["epsilon_clients"] == full.rows[-1]["epsilon_clients"]
    a, b = full.fed.adapted.get_state(), resumed.fed.adapted.get_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
