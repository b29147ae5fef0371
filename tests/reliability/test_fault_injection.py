"""Fault injection: one of three clients sends a corrupt update; the server rejects it with the right
reason, and the global state stays finite and equals the aggregate of the two honest clients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsb.core.federation import build_federation
from fedsb.core.validation import UpdateValidator
from fedsb.methods.base import ClientUpdate
from fedsb.simulation.simulator import Simulator
from tests.reliability._tiny import METHOD_NAMES, tiny_cfg

BAD = "1"  # the faulty client's id


def _first(u: ClientUpdate) -> str:
    return sorted(u.payload)[0]


def nan(u):
    k = _first(u)
    t = u.payload[k].clone()
    t.view(-1)[0] = float("nan")
    return dataclasses.replace(u, payload={**u.payload, k: t})


def inf(u):
    k = _first(u)
    t = u.payload[k].clone()
    t.view(-1)[-1] = float("-inf")
    return dataclasses.replace(u, payload={**u.payload, k: t})


def wrong_shape(u):
    k = _first(u)
    t = u.payload[k]
    return dataclasses.replace(u, payload={**u.payload, k: torch.zeros(t.shape[0] + 1, *t.shape[1:])})


def wrong_dtype(u):
    k = _first(u)
    return dataclasses.replace(u, payload={**u.payload, k: u.payload[k].to(torch.float64)})


def negative_count(u):
    return dataclasses.replace(u, num_examples=-5)


FAULTS = {
    "nan": (nan, "NaN"),
    "inf": (inf, "Inf"),
    "shape": (wrong_shape, "shape"),
    "dtype": (wrong_dtype, "dtype"),
    "negative-count": (negative_count, "example count"),
}

_FEDS: dict[str, object] = {}


def federation(method: str, **over):
    """One model load per method and config; every test re-initialises its adapters."""
    key = f"{method}{sorted(over.items())}"
    if key not in _FEDS:
        _FEDS[key] = build_federation(tiny_cfg(method, train={"local_steps": 1, "batch_size": 4, "threads": 1}, **over))
    fed = _FEDS[key]
    fed.adapted.set_residual_state({})  # FedEx/FLoRA fold residuals in: start from W0 again
    return fed


def run_one_faulty_round(method: str, fault, **over):
    fed = federation(method, **over)
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    before = sim.state
    payload = fed.method.broadcast(before)
    fed.method.load_adapter(fed.adapted, payload)
    honest: list[ClientUpdate] = []
    real_filter = sim.validator.filter

    def tampering_filter(updates, *args, **kwargs):
        honest.extend(u for u in updates if u.client_id != BAD)
        return real_filter([fault(u) if u.client_id == BAD else u for u in updates], *args, **kwargs)

    sim.validator.filter = tampering_filter
    row = sim.run_round(1, payload)
    return sim, before, honest, row


def assert_finite(tensors: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    assert not bad, bad


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_client_is_rejected_and_honest_aggregate_kept(method, fault):
    corrupt, reason = FAULTS[fault]
    sim, before, honest, row = run_one_faulty_round(method, corrupt)
    assert row["clients_accepted"] == 2 and not row["skipped"]
    assert [r["client"] for r in row["rejected"]] == [BAD]
    assert reason in row["rejected"][0]["reason"], row["rejected"]
    assert [u.client_id for u in honest] == ["0", "2"]
    expected = sim.fed.method.aggregate(before, honest)
    for part in ("adapter", "pending"):
        got, want = getattr(sim.state, part), getattr(expected, part)
        assert got.keys() == want.keys()
        assert_finite(got)
        for k in want:
            assert torch.equal(got[k], want[k]), (part, k)
    assert_finite({**sim.fed.adapted.get_state(), **sim.fed.adapted.residual_state()})
    assert row["loss"] == row["loss"]  # the evaluated global model is finite


@pytest.mark.parametrize("method", ["fed-sb", "fedex-lora"])
def test_round_skipped_below_min_clients_leaves_global_state_unchanged(method):
    sim, before, honest, row = run_one_faulty_round(method, nan, federation={"clients": 3, "rounds": 3, "min_clients": 3,
                                                                              "partition": "iid"})
    assert row["skipped"] and row["clients_accepted"] == 2
    assert sim.state is before or all(torch.equal(sim.state.adapter[k], before.adapter[k]) for k in before.adapter)
    assert sim.state.round == before.round and sim.state.pending.keys() == before.pending.keys()
    assert sim.fed.adapted.residual_state() == {}  # nothing folded into the base weights
    for k, v in sim.fed.method.broadcast(before).items():
        assert torch.equal(sim.fed.adapted.get_state([k])[k], v), k


def test_honest_round_rejects_nobody():
    for method in METHOD_NAMES:
        _, _, honest, row = run_one_faulty_round(method, lambda u: u)
        assert row["rejected"] == [] and row["clients_accepted"] == 3, method


def _update(cid: str, n: int, scale: float = 1.0) -> ClientUpdate:
    return ClientUpdate(cid, {"w": torch.full((2, 2), scale)}, n)


def test_example_count_bounds():
    """Impossible counts are rejected; an implausibly large one is capped (tests/test_validation.py has the
    setup declarations and the weight bound per method)."""
    v = UpdateValidator(max_examples=1000, examples_factor=10)
    ref = {"w": torch.zeros(2, 2)}
    ups = [_update("0", 10), _update("1", 12), _update("2", 500), _update("3", 11), _update("4", 5000), _update("5", 0)]
    accepted, rejected = v.filter(ups, ref, ["w"])
    why = {u.client_id: r for u, r in rejected}
    assert [u.client_id for u in accepted] == ["0", "1", "2", "3"]
    assert "plausible maximum 1000" in why["4"]
    assert "not a positive integer" in why["5"]
    assert accepted[2].num_examples == 110 and v.capped == [{"client": "2", "examples": 500, "cap": 110}]  # 10 x median 11


def test_norm_factor_is_configurable():
    """Changes above norm_factor x the round's median change are scaled down to it (not rejected); 0 = off."""
    ref = {"w": torch.zeros(2, 2)}
    ups = [_update("0", 5), _update("1", 5, 2.0), _update("2", 5, 50.0)]  # change norms 2, 4, 100
    accepted, _ = UpdateValidator(norm_factor=100).filter(ups, ref, ["w"])
    assert torch.equal(accepted[2].payload["w"], ups[2].payload["w"])
    v = UpdateValidator.from_config(tiny_cfg(federation={"norm_factor": 10.0, "max_change_norm": 0.0}))
    accepted, rejected = v.filter(ups, ref, ["w"])
    assert not rejected and [c["client"] for c in v.clipped] == ["2"] and v.clipped[0]["bound"] == pytest.approx(40.0)
    assert torch.allclose(accepted[2].payload["w"], torch.full((2, 2), 20.0))  # norm 40, same direction
    assert UpdateValidator(norm_factor=0).filter(ups, ref, ["w"])[0][2] is ups[2]  # 0 switches the bound off
