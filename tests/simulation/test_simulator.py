"""Simulator behaviour: client sampling, determinism, public init, skipped rounds, schedules."""

from __future__ import annotations

import torch

from fedsb.core.federation import initialise_adapters
from fedsb.core.training import Schedule
from fedsb.methods.base import ClientUpdate
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


def test_fraction_samples_that_share_of_clients_each_round_deterministically() -> None:
    fed = tiny_federation(federation={"clients": 6, "fraction": 0.5})
    picks = [fed.sample_clients(r) for r in range(1, 6)]
    assert all(len(p) == 3 and len(set(p)) == 3 for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert picks == [fed.sample_clients(r) for r in range(1, 6)]


def test_same_seed_same_result_and_another_seed_differs() -> None:
    a = Simulator(tiny_federation().cfg, progress=False).run()
    b = Simulator(tiny_federation().cfg, progress=False).run()
    c_fed = tiny_federation(seed=1)
    c = Simulator(c_fed.cfg, fed=c_fed, progress=False).run()
    sa, sb, sc = (r.fed.adapted.get_state() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert [r.get("accuracy") for r in a.rows] == [r.get("accuracy") for r in b.rows]


def test_public_init_uploads_nothing_and_uses_no_client_or_test_data() -> None:
    fed = tiny_federation(init={"source": "public"})
    public = {id(e) for e in fed.public}
    assert public and not public & {id(e) for e in fed.task.test}
    assert not public & {id(e) for shard in fed.shards for e in shard}
    up = initialise_adapters(fed)
    assert (up["upload_bytes"], up["upload_params"], up["clipped"]) == (0, 0, [])
    layer = next(iter(fed.adapted.layers.values()))
    assert float(layer.lora_R.weight.detach().abs().sum()) > 0


def test_round_with_too_few_valid_updates_is_skipped_and_state_unchanged() -> None:
    fed = tiny_federation(federation={"min_clients": 3})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    before = {k: v.clone() for k, v in sim.state.adapter.items()}
    original = fed.method.client_update

    def poisoned(adapted):
        out = original(adapted)
        k = next(iter(out))
        out[k] = out[k] * float("nan")
        return out

    fed.method.client_update = poisoned  # type: ignore[method-assign]
    row = sim.run_round(1, fed.method.broadcast(sim.state))
    assert row["skipped"] and row["clients_accepted"] == 0
    assert all("NaN" in r["reason"] for r in row["rejected"])
    assert all(torch.equal(before[k], sim.state.adapter[k]) for k in before)
    assert isinstance(ClientUpdate, type)


def test_schedule_warms_up_then_decays() -> None:
    s = Schedule(total_steps=100, warmup_steps=10, kind="cosine")
    assert s.factor(0) == 0.1 and s.factor(9) == 1.0
    assert 0.49 < s.factor(55) < 0.51 and s.factor(100) == 0.0
    assert Schedule(100, 0, "linear").factor(50) == 0.5
    assert Schedule(100, 0, "constant").factor(99) == 1.0
