"""Bounded client influence (DESIGN §5.2): one hostile but well-formed client moves a round's aggregate by at
most about one honest change, for every method; counts must match the setup declaration and are capped;
the absolute change cap binds with one or two clients and never clips honest local training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedsb.comm.accounting import to_wire
from fedsb.core.client import train_client
from fedsb.core.federation import Federation, build_federation
from fedsb.core.rounds import server_step
from fedsb.core.training import build_optimizer
from fedsb.core.validation import (
    ADAMW_BETAS,
    UpdateValidator,
    adam_ratio_bound,
    adamw_change_bound,
    change_norm,
    lower_median,
)
from fedsb.methods.base import ClientUpdate, aggregation_weights
from fedsb.simulation.simulator import Simulator
from tests.reliability._tiny import METHOD_NAMES, tiny_cfg

BAD = "1"


# --- the absolute cap: what AdamW can do ------------------------------------------------------------------


def test_adam_ratio_bound_holds_for_any_gradients() -> None:
    """No gradient sequence moves a coordinate by more than ``lr * adam_ratio_bound(t)`` at step t, and the
    bound is reached (the Cauchy-Schwarz case: same-sign gradients growing by b1/b2 per step), so it is tight."""
    g = torch.Generator().manual_seed(0)
    steps = 60
    worst = [0.0] * steps
    sequences = [torch.randn(steps, 64, generator=g) * torch.logspace(-3, 3, 64) for _ in range(10)]
    sequences.append((ADAMW_BETAS[1] / ADAMW_BETAS[0]) ** torch.arange(steps, dtype=torch.float32).unsqueeze(1))
    for grads in sequences:
        p = torch.nn.Parameter(torch.zeros(grads.shape[1]))
        opt = torch.optim.AdamW([p], lr=1.0, weight_decay=0.0, eps=0.0)
        for t in range(steps):
            before = p.detach().clone()
            p.grad = grads[t].clone()
            opt.step()
            step = float((p.detach() - before).abs().max())
            assert step <= adam_ratio_bound(t + 1) * (1 + 1e-5), t
            worst[t] = max(worst[t], step)
    assert adam_ratio_bound(1) == pytest.approx(1.0)
    assert worst[-1] == pytest.approx(adam_ratio_bound(steps), rel=1e-3)


def test_adamw_change_bound_covers_weight_decay_and_schedule() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(50, generator=g) * 3)
    start = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=0.05, weight_decay=0.5)
    for t in range(40):
        for group in opt.param_groups:
            group["lr"] = 0.05 * (0.5 + 0.5 * math.cos(math.pi * t / 40))  # a decaying schedule, factor <= 1
        p.grad = torch.randn(50, generator=g).sign()
        opt.step()
    moved = float((p.detach() - start).norm())
    bound = adamw_change_bound(40, 0.05, 50, float(start.norm()), 0.5)
    assert moved <= bound


def test_training_uses_the_betas_the_bound_assumes() -> None:
    fed = _fed("fed-sb")
    opt = build_optimizer(fed.adapted, fed.lr, fed.head_lr, 0.0)
    assert all(tuple(group["betas"]) == ADAMW_BETAS for group in opt.param_groups)


def test_lower_median_cannot_be_raised_by_one_of_two() -> None:
    assert lower_median([1.0, 1e9]) == 1.0
    assert lower_median([3.0, 1e9, 2.0]) == 3.0
    assert lower_median([5.0]) == 5.0


# --- one round of each method, through server_step (shared by the simulator and Flower) ---------------------

_FEDS: dict[str, Federation] = {}


def _fed(method: str, clients: int = 3) -> Federation:
    key = f"{method}-{clients}"
    if key not in _FEDS:
        _FEDS[key] = build_federation(tiny_cfg(method, federation={"clients": clients, "rounds": 3, "partition": "iid"}))
    return _FEDS[key]


class Round:
    """One round's honest uploads and a way to aggregate any list of updates from the same start."""

    def __init__(self, method: str, clients: int = 3) -> None:
        fed = self.fed = _fed(method, clients)
        fed.adapted.set_residual_state({})
        self.sim = Simulator(fed.cfg, fed=fed, progress=False)
        self.sim.initialise()
        self.state = self.sim.state
        self.payload = to_wire(fed.method.broadcast(self.state))
        fed.method.load_adapter(fed.adapted, self.payload)
        fed.method.begin_round(fed.adapted, self.state.round)  # as both engines do (RoLoRA: what trains this round)
        self.residual = fed.adapted.residual_state()
        self.start = self.model()
        self.reference = fed.adapted.get_state(fed.method.upload_names(fed.adapted))
        self.honest: list[ClientUpdate] = []
        for c in range(clients):
            fed.method.load_adapter(fed.adapted, self.payload)
            fed.method.begin_round(fed.adapted, self.state.round)
            metrics = train_client(fed, c, 1, 0)
            self.honest.append(ClientUpdate(str(c), fed.method.client_update(fed.adapted), len(fed.shards[c]), metrics))

    def model(self) -> torch.Tensor:
        """The global model as one vector: every layer's W - W0 (residual + adapter product) and the head."""
        a = self.fed.adapted
        parts = list(a.delta_weights().values()) + list(a.get_state(a.head_state_names()).values())
        return torch.cat([t.reshape(-1).double() for t in parts])

    def aggregate(self, updates: list[ClientUpdate], validator: UpdateValidator | None = None) -> tuple[torch.Tensor, UpdateValidator]:
        self.fed.adapted.set_residual_state(self.residual)
        v = validator or self.sim.validator
        server_step(self.fed, self.fed.method, self.state, updates, v, "float32", 1)
        return self.model(), v

    def honest_changes(self) -> list[float]:
        """How far each honest client's update alone moves the global model."""
        return [float((self.aggregate([u])[0] - self.start).norm()) for u in self.honest]

    def scaled_change(self, u: ClientUpdate, factor: float) -> ClientUpdate:
        return dataclasses.replace(u, payload={k: self.reference[k] + factor * (t - self.reference[k]) for k, t in u.payload.items()})


def attack(r: Round, kind: str) -> tuple[ClientUpdate, UpdateValidator]:
    """Client 1's well-formed attack, and the validator of the engine it targets."""
    u = r.honest[1]
    if kind == "change-x1000":
        return r.scaled_change(u, 1000.0), r.sim.validator
    if kind == "reference-x100":  # Fed-SB: R + 99 ||R|| along R (for every method: 100 x what it started from)
        return dataclasses.replace(u, payload={k: 100.0 * r.reference[k] for k in u.payload}), r.sim.validator
    if kind == "upload-x1e6":
        return dataclasses.replace(u, payload={k: 1e6 * t for k, t in u.payload.items()}), r.sim.validator
    # count-x100: over Flower the client declared 100x at setup and reports it every round, with 3x its change
    v = UpdateValidator.from_config(r.fed.cfg, fed=r.fed)
    declared = {x.client_id: x.num_examples for x in r.honest}
    declared[BAD] *= 100
    v.declare(declared)
    return dataclasses.replace(r.scaled_change(u, 3.0), num_examples=declared[BAD]), v


@pytest.mark.parametrize("kind", ["change-x1000", "reference-x100", "upload-x1e6", "count-x100"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_of_three_clients_moves_the_aggregate_by_at_most_an_honest_change(method: str, kind: str) -> None:
    r = Round(method)
    honest_only, _ = r.aggregate([r.honest[0], r.honest[2]])
    bad, validator = attack(r, kind)
    attacked, v = r.aggregate([r.honest[0], bad, r.honest[2]], validator)
    assert [c["client"] for c in v.clipped] == [BAD], v.clipped
    if kind == "count-x100":
        assert v.capped == [{"client": BAD, "examples": bad.num_examples, "cap": 2 * r.honest[0].num_examples}]
    move = float((attacked - honest_only).norm())
    typical = lower_median(r.honest_changes())
    assert move <= 1.25 * typical, (move, typical)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_honest_clients_are_not_clipped(method: str) -> None:
    r = Round(method)
    _, v = r.aggregate(r.honest)
    assert v.clipped == [] and v.capped == []
    for u in r.honest:  # alone (one client: only the absolute cap applies)
        _, v = r.aggregate([u])
        assert v.clipped == []


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_client_is_held_to_what_its_local_training_can_do(method: str) -> None:
    """With one client the median is its own change: the training-derived cap is what binds, and it is a
    meaningful bound (a small multiple of a real change), not only a finite one."""
    r = Round(method, clients=1)
    v = r.sim.validator
    honest = change_norm(r.honest[0], r.reference)
    cap = v.absolute_cap(r.honest[0].num_examples, r.reference, "float32")
    assert cap is not None and honest < cap < 50 * honest, (honest, cap)
    accepted, _ = v.filter([r.scaled_change(r.honest[0], 1000.0)], r.reference, list(r.reference))
    assert len(v.clipped) == 1 and v.clipped[0]["bound"] == pytest.approx(cap)
    assert change_norm(accepted[0], r.reference) == pytest.approx(cap, rel=1e-5)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_two_clients_the_hostile_one_is_held_to_the_honest_change(method: str) -> None:
    r = Round(method, clients=2)
    honest_only, _ = r.aggregate([r.honest[0]])
    attacked, v = r.aggregate([r.honest[0], r.scaled_change(r.honest[1], 1000.0)])
    # weight 1/2, change at most 2x the honest one: (2 + 1) / 2 = 1.5 honest changes
    assert float((attacked - honest_only).norm()) <= 1.6 * float((honest_only - r.start).norm())
    assert [c["client"] for c in v.clipped] == [BAD]


def test_a_round_count_that_differs_from_the_setup_declaration_is_rejected() -> None:
    r = Round("fed-sb")
    twice = dataclasses.replace(r.honest[1], num_examples=2 * r.honest[1].num_examples)  # plausible, but not declared
    accepted, rejected = r.sim.validator.filter([r.honest[0], twice, r.honest[2]], r.reference, list(r.reference))
    assert [u.client_id for u in accepted] == ["0", "2"]
    assert "differs from the" in rejected[0][1] and "declared at setup" in rejected[0][1]


@pytest.mark.parametrize("clients", [1, 2, 3])
def test_a_declared_count_weighs_at_most_twice_the_median(clients: int) -> None:
    v = UpdateValidator()
    declared = {str(c): 100 for c in range(clients)}
    declared["0"] = 10_000
    v.declare(declared)
    ups = [ClientUpdate(c, {"w": torch.zeros(2)}, n) for c, n in declared.items()]
    accepted, rejected = v.filter(ups, {"w": torch.zeros(2)}, ["w"])
    assert not rejected
    p = aggregation_weights(accepted, "examples")
    # the lower median of the declarations is an honest 100 (with one client: its own count)
    assert p[0] == pytest.approx(1.0 if clients == 1 else 200 / (200 + 100 * (clients - 1)))


def test_the_round_row_reports_clipping() -> None:
    r = Round("fed-sb")
    sim = r.sim
    real = sim.validator.filter

    def tampering(updates, *args, **kwargs):  # client 1 sends R + 99 ||R|| along R
        return real([dataclasses.replace(u, payload={k: 100.0 * r.reference[k] for k in u.payload}) if u.client_id == BAD else u
                     for u in updates], *args, **kwargs)

    sim.validator.filter = tampering  # type: ignore[method-assign]
    r.fed.adapted.set_residual_state(r.residual)
    row = sim.run_round(1, r.payload)
    assert row["rejected"] == [] and row["clients_accepted"] == 3
    assert [c["client"] for c in row["clipped"]] == [BAD]
    clip = row["clipped"][0]
    assert clip["norm"] > 10 * clip["bound"] > 0 and row["capped"] == []


def test_bounds_can_be_switched_off() -> None:
    cfg = tiny_cfg("fed-sb", federation={"norm_factor": 0.0, "max_change_norm": 0.0, "max_examples_factor": 0.0})
    v = UpdateValidator.from_config(cfg)
    ups = [ClientUpdate("0", {"w": torch.ones(2)}, 5), ClientUpdate("1", {"w": torch.full((2,), 1e6)}, 500)]
    accepted, _ = v.filter(ups, {"w": torch.zeros(2)}, ["w"])
    assert v.clipped == [] and v.capped == [] and torch.equal(accepted[1].payload["w"], ups[1].payload["w"])
    assert UpdateValidator.from_config(cfg).absolute_cap(5, {"w": torch.zeros(2)}, "float32") is None


def test_secure_aggregation_keeps_only_format_checks() -> None:
    v = UpdateValidator.from_config(tiny_cfg("fed-sb"), fed=_fed("fed-sb")).without_bounds()
    v.declare({})
    mean = ClientUpdate("secagg-mean", {"w": torch.full((2,), 1e6)}, 1)
    accepted, rejected = v.filter([mean], {"w": torch.zeros(2)}, ["w"])
    assert accepted == [mean] and not rejected and v.clipped == []


def test_client_level_dp_drops_the_median_relative_bound() -> None:
    # Under client-level DP each update is bounded on its own (re-clip to C); a median-relative bound would
    # couple clients and void the per-client sensitivity the accountant assumes.
    from fedsb.core.validation import UpdateValidator
    from tests.helpers import tiny_config

    plain = UpdateValidator.from_config(tiny_config())
    private = UpdateValidator.from_config(tiny_config(dp={"mode": "client", "noise_multiplier": 1.0}))
    assert plain.norm_factor > 0 and private.norm_factor == 0
