"""``eval.initial = false`` skips the round-0 evaluation in both engines and changes nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, RecordDict
from rich.console import Console

from fedsb.cli.run import run
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.serverapp import serve
from fedsb.flower.strategy import FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config


def counting(sim_or_strategy: Any) -> list[int]:
    """Count the server evaluations of a Simulator or strategy (wraps its ``evaluate``)."""
    calls: list[int] = []
    full = sim_or_strategy.evaluate

    def spy() -> dict[str, float]:
        calls.append(1)
        return full()

    sim_or_strategy.evaluate = spy
    return calls


def test_the_simulator_skips_only_the_initial_evaluation(tmp_path: Path) -> None:
    runs = {}
    for initial in (True, False):
        sim = Simulator(tiny_config(out=str(tmp_path / str(initial)), eval={"initial": initial}), progress=False)
        calls = counting(sim)
        runs[initial] = (sim.run(), len(calls))
    (on, n_on), (off, n_off) = runs[True], runs[False]
    assert (n_on, n_off) == (3, 2)  # round 0 + 2 rounds, or the 2 rounds only
    assert "accuracy" in on.rows[0] and "accuracy" not in off.rows[0]
    assert off.summary["initial_metrics"] == {} and off.rows[-1]["accuracy"] == on.rows[-1]["accuracy"]
    for a, b in zip(on.state.adapter.values(), off.state.adapter.values(), strict=True):
        assert torch.equal(a, b)  # the training is untouched


def test_flower_skips_the_initial_evaluation_too(tmp_path: Path) -> None:
    cfg = tiny_config(out=str(tmp_path / "flower"), eval={"initial": False})
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    strategy = serve(FakeGrid(client_app, 3), ctx, cfg, FlowerOptions())
    assert strategy.rows[0]["round"] == 0 and "accuracy" not in strategy.rows[0]
    assert all("accuracy" in r for r in strategy.rows[1:])


def test_run_reports_the_final_accuracy_without_an_initial_one(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    result = run(tiny_config(out=str(tmp_path / "r"), eval={"initial": False}), console=console, progress=False)
    done = [line for line in console.export_text().splitlines() if line.startswith("done in")]
    assert done == [f"done in {result.summary['wall_seconds']:.1f} s: test accuracy {result.rows[-1]['accuracy']:.4f}"]
