"""Multi-round accounting: reported epsilon vs an independent Opacus recomputation, budget stops, delta rules."""

from __future__ import annotations

import json

import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedsb.errors import UsageError
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import PrivacyLedger, epsilon_of, solve_noise_multiplier
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def rdp_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    """Independent of fedsb's ledger: Opacus' RDP analysis functions directly."""
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=ORDERS) for s, q, n in entries)
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0])


def run_dp(rounds: int, **dp):
    fed = tiny_federation(federation={"rounds": rounds}, dp=dp)
    trainer = make_dp_trainer(fed)
    sim = Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False)
    return sim, sim.run(), trainer


def test_reported_epsilon_matches_independent_recomputation_and_is_monotone() -> None:
    sim, result, trainer = run_dp(3, mode="sample", epsilon=2.0)
    rows = result.rows
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    delta = rows[-1]["delta"]
    for row in rows:
        t = row["round"]
        for c, eps in row["epsilon_clients"].items():
            plan = trainer.plans[c]
            entries = [(plan.init_noise_multiplier, plan.init_sample_rate, 1)]  # fed-sb federated init
            entries.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * t))
            expected = rdp_epsilon([e for e in entries if e[2] > 0], delta)
            assert abs(eps - expected) < 1e-6, (t, c, eps, expected)
        assert row["epsilon"] == max(row["epsilon_clients"].values())
    for c in rows[0]["epsilon_clients"]:
        series = [r["epsilon_clients"][c] for r in rows]
        assert all(a < b for a, b in zip(series, series[1:], strict=False))
    assert rows[-1]["epsilon"] <= 2.0 and rows[-1]["epsilon"] > 1.99  # the solved sigma spends the budget
    assert result.summary["final_metrics"]["epsilon"] == rows[-1]["epsilon"]


def test_budget_for_two_rounds_stops_after_two() -> None:
    sigma = 1.2
    probe = tiny_federation(federation={"rounds": 4}, dp={"mode": "sample", "noise_multiplier": sigma})
    plans = make_dp_trainer(probe).plans
    delta = 1 / (10 * max(len(s) for s in probe.shards))  # the default delta
    eps2 = max(rdp_epsilon([(sigma, p.init_sample_rate, 1), (sigma, p.sample_rate, 2 * p.steps_per_round)], delta)
               for p in plans.values())
    eps3 = max(rdp_epsilon([(sigma, p.init_sample_rate, 1), (sigma, p.sample_rate, 3 * p.steps_per_round)], delta)
               for p in plans.values())
    budget = (eps2 + eps3) / 2
    sim, result, _ = run_dp(4, mode="sample", noise_multiplier=sigma, epsilon=budget)
    assert [r["round"] for r in result.rows] == [0, 1, 2]
    assert "accuracy" in result.rows[-1]  # the last round the budget allows is evaluated
    assert sim.stop_reason and "budget exhausted" in sim.stop_reason and "round 3" in sim.stop_reason
    assert result.summary["stopped_early"] == sim.stop_reason
    assert result.rows[-1]["epsilon"] <= budget


def test_solve_noise_multiplier_is_tight() -> None:
    stretches = [(0.2, 1), (0.05, 60)]
    sigma = solve_noise_multiplier(1.0, 1e-4, stretches)
    hist = lambda s: [(s, q, n) for q, n in stretches]  # noqa: E731
    assert epsilon_of(hist(sigma), 1e-4) <= 1.0 < epsilon_of(hist(sigma * 0.999), 1e-4)
    with pytest.raises(UsageError):
        solve_noise_multiplier(1e-9, 1e-9, [(1.0, 10**6)])


def test_ledger_state_round_trips_through_json() -> None:
    ledger = PrivacyLedger("rdp", 1e-3)
    ledger.spend(0, 1.1, 0.1, 3)
    ledger.spend(0, 1.1, 0.1, 2)
    ledger.spend("1", 0.9, 0.2, 1)
    assert ledger.history(0) == [(1.1, 0.1, 5)]
    again = PrivacyLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert again.epsilons() == ledger.epsilons()
    assert abs(ledger.epsilon(0) - ledger.accountant(0).get_epsilon(delta=1e-3)) < 1e-12


def test_delta_looser_than_one_over_n_needs_explicit_opt_in() -> None:
    with pytest.raises(UsageError, match="allow_loose_delta"):
        make_dp_trainer(tiny_federation(dp={"mode": "sample", "epsilon": 1.0, "delta": 0.1}))
    loose = {"mode": "sample", "noise_multiplier": 1.0, "delta": 0.1, "allow_loose_delta": True}
    trainer = make_dp_trainer(tiny_federation(dp=loose))
    assert trainer is not None and trainer.ledger.delta == 0.1


def test_epsilon_is_never_negative() -> None:
    # One heavily noised step at a loose delta: Opacus' RDP conversion returns a negative number here.
    from opacus.accountants.analysis import rdp as rdp_analysis

    from fedsb.privacy.accounting import RDP_ORDERS

    raw, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp_analysis.compute_rdp(
        q=1.0, noise_multiplier=5.0, steps=1, orders=RDP_ORDERS), delta=0.3)
    assert raw < 0
    assert epsilon_of([(5.0, 1.0, 1)], 0.3) == 0.0
