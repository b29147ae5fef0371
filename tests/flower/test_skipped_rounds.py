"""Base-weight increments (FedEx-LoRA residual, FLoRA stack) over Flower when a round is skipped or a node
misses rounds: every increment is applied exactly once, on every node, in training and in client evaluation.

A round is skipped by a validator that rejects every (well-formed) update of that round, the same in the
simulator and in the strategy (in-process FakeGrid, no Ray).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.adapters.layer import AdapterLayer
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.records import from_record
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config

BASE_METHODS = ["fedex-lora", "flora"]


def reject_round(validator: Any, n: int) -> None:
    """Make the ``n``-th call of ``validator.filter`` (round n: one call per round) reject every update."""
    real, calls = validator.filter, [0]

    def filter(updates, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == n:
            return [], [(u, "rejected by the test") for u in updates]
        return real(updates, *args, **kwargs)

    validator.filter = filter


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def node_residual(grid: FakeGrid, node: int) -> dict[str, torch.Tensor]:
    st = grid.contexts[node].state.array_records
    return from_record(st["fedsb.residual"]) if "fedsb.residual" in st else {}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), (sorted(a), sorted(b))
    return max([float((a[k] - b[k]).abs().max()) for k in a] or [0.0])


def run_with_snapshots(cfg: Any, opts: FlowerOptions | None = None) -> tuple[FedsbStrategy, FakeGrid, dict[int, dict]]:
    """Run over a FakeGrid with round 2 skipped; record the server's residual as each round's broadcast leaves
    (what a node that trains in that round must hold while it trains)."""
    s = FedsbStrategy(cfg, opts or FlowerOptions())
    reject_round(s.validator, 2)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    real = s.configure_train

    def configure_train(server_round, *args, **kwargs):  # type: ignore[no-untyped-def]
        snapshots[server_round] = s.fed.adapted.residual_state()
        return real(server_round, *args, **kwargs)

    s.configure_train = configure_train  # type: ignore[method-assign]
    grid = FakeGrid(client_app, cfg.federation.clients)
    s.run(grid, context=server_context())
    return s, grid, snapshots


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("method", BASE_METHODS)
def test_a_skipped_round_leaves_every_node_on_the_servers_base(method: str, fraction: float) -> None:
    rounds = 3 if fraction == 1.0 else 4
    cfg = tiny_config(method=method, federation={"rounds": rounds, "fraction": fraction})
    s, grid, snapshots = run_with_snapshots(cfg)
    assert s.rows[2]["skipped"] and not s.rows[1]["skipped"] and not s.rows[3]["skipped"]
    assert s.fed.adapted.residual_state(), "round 1 aggregated: the server holds a base increment"
    for pid, node in s.node_of.items():
        trained = [r for r in range(1, rounds + 1) if pid in s.fed.sample_clients(r)]
        assert trained, f"partition {pid} never trained"
        held = node_residual(grid, node)
        assert max_diff(held, snapshots[trained[-1]]) <= 1e-6, (pid, trained)
    # and the server itself equals the simulator with the same skipped round
    sim = Simulator(cfg, progress=False)
    reject_round(sim.validator, 2)
    sim.run()
    assert sim.rows[2]["skipped"]
    assert max_diff(s.fed.adapted.residual_state(), sim.fed.adapted.residual_state()) <= 1e-6
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6


@pytest.mark.parametrize("method", BASE_METHODS)
def test_client_evaluation_uses_the_servers_base(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(method=method, federation={"rounds": 3, "fraction": 0.5})
    s = FedsbStrategy(cfg, FlowerOptions(client_eval=True))
    reject_round(s.validator, 2)
    seen: list[tuple[str, float]] = []
    objective = type(s.fed.objective)
    real = objective.evaluate

    def evaluate(self, model, *args, **kwargs):  # type: ignore[no-untyped-def]
        if model is not s.fed.adapted.model:  # a node's model: compare its base with the server's right now
            mine = {n: m.residual for n, m in model.named_modules() if isinstance(m, AdapterLayer) and m.residual is not None}
            server = {n: m.residual for n, m in s.fed.adapted.model.named_modules()
                      if isinstance(m, AdapterLayer) and m.residual is not None}
            seen.append((str(len(seen)), max_diff(mine, server)))
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(objective, "evaluate", evaluate)
    s.run(FakeGrid(client_app, 3), context=server_context())
    assert s.rows[2]["skipped"]
    assert len(seen) == 3 * 3, "every node evaluates after every round"
    assert max(d for _, d in seen) <= 1e-6, seen
