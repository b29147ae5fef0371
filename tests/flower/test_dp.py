"""Differential privacy over Flower (fake in-process grid): the same result and epsilon as the simulator.

Sample-level DP: DP-SGD and the privatised init run on the nodes, each node's accountant lives in its
``Context.state`` and the server reports the nodes' epsilons. Client-level DP: clipping on the nodes, noise
at the server, through the same functions as the simulator.
"""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.errors import UsageError
from fedsb.flower.clientapp import STATE_TRAINER
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import PrivacyLedger, epsilon_of
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid, crash_on_train_round
from tests.helpers import tiny_config, tiny_federation

SAMPLE = {"dp": {"mode": "sample", "epsilon": 3.0}, "init": {"source": "federated"}}
CLIENT = {"dp": {"mode": "client", "epsilon": 5.0, "max_grad_norm": 0.05}, "init": {"source": "federated"}}
EPS_KEYS = ("dp_mode", "epsilon", "epsilon_clients", "delta", "dp_noise")


@pytest.fixture
def seed_derived_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test double for the DP randomness: every party derives its generators from the config seed (as
    ``dp.reproducible_noise`` does, which Flower refuses), so the Flower run and the simulator draw the same
    noise and batches and their states can be compared; the default secret noise differs on every run."""
    from fedsb.privacy.noise import derived_seed
    from fedsb.privacy.trainer_base import DPTrainer

    def generator(self, *parts: int, device="cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derived_seed(self.fed.cfg.seed, *parts))

    monkeypatch.setattr(DPTrainer, "generator", generator)


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def run_flower(opts: FlowerOptions | None = None, **over) -> tuple[FedsbStrategy, FakeGrid]:
    s = FedsbStrategy(tiny_config(**over), opts or FlowerOptions())
    grid = FakeGrid(client_app, s.cfg.federation.clients)
    s.run(grid, context=server_context())
    return s, grid


def run_sim(**over) -> Simulator:
    fed = tiny_federation(**over)
    sim = Simulator(fed.cfg, fed=fed, trainer=make_dp_trainer(fed), progress=False)
    sim.run()
    return sim


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max([float((a[k] - b[k]).abs().max()) for k in a] or [0.0])


def dp_columns(rows: list[dict]) -> list[dict]:
    return [{"round": r["round"], **{k: r[k] for k in EPS_KEYS}} for r in rows]


@pytest.mark.parametrize("over", [SAMPLE, CLIENT], ids=["sample", "client"])
def test_same_state_and_epsilon_as_the_simulator(over: dict, seed_derived_noise: None) -> None:
    s, _ = run_flower(**over)
    sim = run_sim(**over)
    assert s.state is not None and s.state.round == sim.state.round == 2
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6
    assert max_diff(s.fed.adapted.get_state(), sim.fed.adapted.get_state()) <= 1e-6
    assert dp_columns(s.rows) == dp_columns(sim.rows)  # round 0 (the private init) included
    eps = [r["epsilon"] for r in s.rows]
    assert eps[0] > 0 and eps == sorted(eps) and eps[-1] <= over["dp"]["epsilon"] * (1 + 1e-9)
    assert s.result_summary()["privacy"]["mode"] == over["dp"]["mode"]


def test_context_state_carries_each_nodes_accountant_across_rounds() -> None:
    s, grid = run_flower(**SAMPLE)
    cfg = s.cfg
    for pid, node in s.node_of.items():
        state = json.loads(str(grid.contexts[node].state.config_records[STATE_TRAINER]["json"]))
        hist = PrivacyLedger.from_state_dict(state["ledger"]).history(pid)
        # init (one step) + 2 rounds x local steps, composed in one accountant
        assert sum(n for _, _, n in hist) == 1 + 2 * s.fed.local_steps(pid)
        eps2 = epsilon_of(hist, s.trainer.ledger.delta)
        assert eps2 == pytest.approx(s.rows[2]["epsilon_clients"][str(pid)], rel=1e-12)
        # drop round 2's steps: what the node had after round 1, as reported in row 1
        plan = s.trainer.plans[str(pid)]
        r1 = [*hist[:-1], (hist[-1][0], hist[-1][1], hist[-1][2] - cfg.train.local_steps)]
        assert plan.noise_multiplier == hist[-1][0]
        assert epsilon_of(r1, s.trainer.ledger.delta) == pytest.approx(s.rows[1]["epsilon_clients"][str(pid)], rel=1e-12)
        assert s.rows[1]["epsilon_clients"][str(pid)] < eps2


def test_budget_stop_matches_the_simulator() -> None:
    # a fixed sigma with a budget that allows some rounds only (2 of 4 at the default delta): both stop before the same round
    over = {"dp": {"mode": "sample", "noise_multiplier": 1.0, "epsilon": 0.85}, "init": {"source": "public"},
            "federation": {"rounds": 4}}
    s, _ = run_flower(**over)
    sim = run_sim(**over)
    assert s.stop_reason and s.stop_reason == sim.stop_reason
    assert [r["round"] for r in s.rows] == [r["round"] for r in sim.rows] == [0, 1, 2]
    assert dp_columns(s.rows) == dp_columns(sim.rows)
    assert "accuracy" in s.rows[-1]


@pytest.mark.parametrize("dp", [SAMPLE, CLIENT], ids=["sample", "client"])
def test_dp_under_secagg_equals_plain(dp: dict, seed_derived_noise: None) -> None:
    over = {**dp, "federation": {"rounds": 1}}
    secure, _ = run_flower(FlowerOptions(secagg=True), **over)
    plain, _ = run_flower(**over)
    assert max_diff(secure.state.adapter, plain.state.adapter) <= 5e-6  # SecAgg+ quantisation only
    assert dp_columns(secure.rows) == dp_columns(plain.rows)


@pytest.mark.parametrize("method", ["fedex-lora", "flora"])
def test_client_level_dp_refused_where_the_simulator_refuses_it(method: str) -> None:
    with pytest.raises(UsageError, match="dp.mode = client"):
        FedsbStrategy(tiny_config(method=method, **CLIENT), FlowerOptions())


def test_resume_continues_each_nodes_accountant(tmp_path, seed_derived_noise: None) -> None:
    from fedsb.flower.serverapp import serve

    over = {**SAMPLE, "federation": {"rounds": 3}}
    ref = serve(FakeGrid(client_app, 3), server_context(), tiny_config(out=str(tmp_path / "whole"), **over), FlowerOptions())
    cfg = tiny_config(out=str(tmp_path / "crashed"), **over)
    grid = FakeGrid(client_app, 3)
    crash_on_train_round(grid, 3)
    with pytest.raises(KeyboardInterrupt):
        serve(grid, server_context(), cfg, FlowerOptions())
    # fresh nodes (empty Context.state): the setup round gives each its accountant back from the checkpoint
    resumed = serve(FakeGrid(client_app, 3), server_context(), cfg, FlowerOptions(), resume=True)
    assert dp_columns(resumed.rows) == dp_columns(ref.rows)
    assert max_diff(resumed.state.adapter, ref.state.adapter) <= 1e-6


def test_secagg_client_dp_is_labelled_client_clipping() -> None:
    # Under SecAgg+ the server sees only the sum and cannot re-clip: summary.json must say who clips.
    secure, _ = run_flower(FlowerOptions(secagg=True), **{**CLIENT, "federation": {"rounds": 1}})
    assert secure.trainer.reclip is False
    assert "SecAgg+" in secure.result_summary()["privacy"]["clipping"]
    plain = make_dp_trainer(tiny_federation(**CLIENT))
    assert plain.reclip is True and "server re-clips" in plain.privacy_summary()["clipping"]
