"""Client-level DP: clipped client deltas, uniform mean plus server noise, one accountant over rounds."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedsb.errors import UsageError
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import epsilon_of
from fedsb.privacy.client_dp import joint_norm
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


def test_clipped_uniform_mean_and_noise_scale() -> None:
    fed = tiny_federation(dp={"mode": "client", "noise_multiplier": 0.0, "max_grad_norm": 1.0}, init={"source": "public"})
    trainer = make_dp_trainer(fed)
    prev = {"w": torch.zeros(4)}
    ups = [ClientUpdate("0", {"w": torch.tensor([3.0, 0, 0, 0])}, 10), ClientUpdate("1", {"w": torch.tensor([0, 0.5, 0, 0])}, 90)]
    # the server's arithmetic: (sum of deltas, each re-clipped to C = 1) / m, m = 3 clients per round
    out = fed.method.aggregate(ServerState(0, prev), ups)
    torch.testing.assert_close(out.adapter["w"], torch.tensor([1.0 / 3, 0.5 / 3, 0, 0]))
    # every client scheduled in the round is charged one q = 1 release
    assert {c: trainer.ledger.history(c) for c in "012"} == {c: [(0.0, 1.0, 1)] for c in "012"}


def test_client_updates_are_clipped_and_epsilon_is_accounted_per_round() -> None:
    fed = tiny_federation(dp={"mode": "client", "epsilon": 5.0, "max_grad_norm": 0.01}, init={"source": "public"})
    trainer = make_dp_trainer(fed)
    sim = Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False)
    sim.initialise()
    names = fed.method.upload_names(fed.adapted)
    before = fed.adapted.get_state(names)
    trainer(fed, 0, 1, 0)
    after = fed.adapted.get_state(names)
    norm = float(torch.sqrt(sum(((after[n] - before[n]).double() ** 2).sum() for n in names)))
    assert norm <= 0.01 * (1 + 1e-5)
    fed2 = tiny_federation(dp={"mode": "client", "epsilon": 5.0}, init={"source": "public"})
    t2 = make_dp_trainer(fed2)
    rows = Simulator(fed2.cfg, fed=fed2, trainer=t2, progress=False).run().rows
    sigma = t2.server_plan.noise_multiplier
    for row in rows[1:]:
        assert abs(row["epsilon"] - epsilon_of([(sigma, 1.0, row["round"])], row["delta"])) < 1e-9
    assert rows[-1]["epsilon"] <= 5.0 and rows[0]["delta"] == pytest.approx(1 / 30)


def test_client_level_dp_refuses_methods_that_release_per_client_factors() -> None:
    for method in ("fedex-lora", "flora"):
        with pytest.raises(UsageError, match="dp.mode = sample"):
            make_dp_trainer(tiny_federation(method=method, dp={"mode": "client", "epsilon": 1.0}))


# --- accounting: a public client schedule gets no amplification (q = 1 over each client's rounds) --------------


def opacus_epsilon(steps: list[tuple[float, int]], delta: float) -> float:
    """An independent recomputation: Opacus' RDP accountant stepped at q = 1 (sigma, count) pairs."""
    acc = RDPAccountant()
    for sigma, n in steps:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=1.0)
    return acc.get_epsilon(delta=delta)


def test_reported_epsilon_with_a_client_fraction_is_q1_over_each_clients_scheduled_rounds() -> None:
    # 3 clients, 2 per round (a fixed-size subset drawn from the public seed), private init
    over = {"dp": {"mode": "client", "noise_multiplier": 2.0, "max_grad_norm": 0.05}, "init": {"source": "federated"},
            "federation": {"rounds": 4, "fraction": 2 / 3}}
    fed = tiny_federation(**over)
    sim = Simulator(fed.cfg, fed=fed, trainer=make_dp_trainer(fed), progress=False)
    rows = sim.run().rows
    taken = dict.fromkeys(range(3), 0)
    expect = []
    for row in rows:
        for c in fed.sample_clients(row["round"]) if row["round"] else []:
            taken[c] += 1
        expect.append({str(c): opacus_epsilon([(2.0, 1), (2.0, n)], row["delta"]) for c, n in taken.items()})  # init + rounds
    assert [r["epsilon"] for r in rows] == pytest.approx([max(e.values()) for e in expect], rel=1e-9)
    assert [r["epsilon_clients"] for r in rows] == [pytest.approx(e, rel=1e-9) for e in expect]
    assert len(set(taken.values())) > 1  # the schedule really is uneven: per-client accounting matters


def test_budget_solver_uses_the_same_q1_model() -> None:
    over = {"dp": {"mode": "client", "epsilon": 3.0}, "init": {"source": "public"}, "federation": {"rounds": 6, "fraction": 2 / 3}}
    fed = tiny_federation(**over)
    trainer = make_dp_trainer(fed)
    sigma = max(p.noise_multiplier for p in trainer.plans.values())
    most = max(sum(c in fed.sample_clients(r) for r in range(1, 7)) for c in range(3))
    eps = opacus_epsilon([(sigma, most)], trainer.ledger.delta)  # the client scheduled in the most rounds
    assert 3.0 * (1 - 1e-3) <= eps <= 3.0 * (1 + 1e-9)
    rows = Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False).run().rows
    assert rows[-1]["round"] == 6 and rows[-1]["epsilon"] == pytest.approx(eps, rel=1e-9)


# --- the server re-clips: one unclipped update or init message cannot void the guarantee ---------------------


def test_an_unclipped_malicious_update_moves_the_aggregate_by_at_most_c_over_m() -> None:
    C = 0.5
    fed = tiny_federation(dp={"mode": "client", "noise_multiplier": 0.0, "max_grad_norm": C}, init={"source": "public"})
    make_dp_trainer(fed)
    prev = {"a": torch.full((3,), 0.2), "b": torch.full((2, 2), -0.1)}
    honest = [ClientUpdate(str(i), {k: v + 0.1 * C * torch.randn(v.shape) for k, v in prev.items()}, 10) for i in range(2)]
    # change of joint norm 1000 C, spread over both tensors (each alone is below it: the clip must be joint)
    bad = ClientUpdate("2", {"a": prev["a"] + torch.tensor([600.0 * C, 0, 0]), "b": prev["b"] + torch.tensor([[0, 800.0 * C], [0, 0]])}, 10)
    m = 3
    clean = fed.method.aggregate(ServerState(0, prev), honest)
    attacked = fed.method.aggregate(ServerState(0, prev), [*honest, bad])
    moved = math.sqrt(sum(float((attacked.adapter[k] - clean.adapter[k]).double().pow(2).sum()) for k in prev))
    assert moved <= C / m * (1 + 1e-5)
    assert moved >= C / m * (1 - 1e-5)  # clipped, not dropped: the direction still counts, with norm C


def test_an_init_message_scaled_by_1e6_is_clipped_by_the_server() -> None:
    C = 0.05
    fed = tiny_federation(dp={"mode": "client", "noise_multiplier": 0.0, "max_grad_norm": C}, init={"source": "federated"})
    trainer = make_dp_trainer(fed)
    honest, n = trainer.client_init(fed, 0)
    huge = {k: v * 1e6 for k, v in trainer.client_init(fed, 1)[0].items()}
    out = trainer.add_init_noise([(honest, n), (huge, n)])
    assert len(out) == 3  # the two messages and the server's noise summand
    for msg, _ in out[:2]:
        assert joint_norm(msg) <= C * (1 + 1e-5)
    torch.testing.assert_close(out[1][0], {k: v * (C / joint_norm(huge)) for k, v in huge.items()})  # direction kept
