"""RoLoRA: the phase follows the server's aggregation count, each round is exact, and the ledger charges
the catch-up of clients that missed rounds."""

from __future__ import annotations

import pytest
import torch

from fedsb.core.client import train_client
from fedsb.methods.base import ClientUpdate, aggregation_weights
from fedsb.methods.rolora import RoLoRA, active_factor
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config


def sim_for(model: str = "tiny-llama", **over) -> Simulator:
    sim = Simulator(tiny_config(model, "rolora", **over), progress=False)
    sim.initialise()
    return sim


def test_the_first_round_trains_b_and_the_phase_alternates_with_the_server_count() -> None:
    sim = sim_for()
    fed, method = sim.fed, sim.fed.method
    assert [active_factor(a) for a in range(4)] == ["lora_B.weight", "lora_A.weight"] * 2
    for aggregations, trained in ((0, "lora_B.weight"), (1, "lora_A.weight"), (2, "lora_B.weight")):
        method.begin_round(fed.adapted, aggregations)
        names = method.upload_names(fed.adapted)
        adapter = [n for n in names if n not in fed.adapted.head_state_names()]
        assert adapter and all(n.endswith(trained) for n in adapter)
        frozen = "lora_A.weight" if trained == "lora_B.weight" else "lora_B.weight"
        assert all(not fed.adapted.model.get_parameter(f"{n}.{frozen}").requires_grad for n in fed.adapted.layers)


@pytest.mark.parametrize("rounds", [1, 2])  # a B round, then an A round
def test_each_round_is_the_weighted_mean_of_the_clients_updates(rounds: int) -> None:
    sim = sim_for(federation={"partition": "dirichlet", "dirichlet_alpha": 0.5})
    fed, method = sim.fed, sim.fed.method
    assert len({len(s) for s in fed.shards}) == 3, "clients must be unequal"
    assert sim.state is not None
    payload = method.broadcast(sim.state)
    for r in range(1, rounds + 1):
        updates, deltas = [], []
        for c in range(3):
            method.load_adapter(fed.adapted, payload)
            method.begin_round(fed.adapted, sim.state.round)
            metrics = train_client(fed, c, r, 0)
            updates.append(ClientUpdate(str(c), method.client_update(fed.adapted), len(fed.shards[c]), metrics))
            deltas.append({n: d.double() for n, d in fed.adapted.delta_weights().items()})
        p = aggregation_weights(updates, "examples")
        sim.state = method.aggregate(sim.state, updates)
        payload = method.broadcast(sim.state)
        method.load_adapter(fed.adapted, payload)
        got = fed.adapted.delta_weights()
        for n, d in got.items():
            want = sum(w * dk[n] for w, dk in zip(p, deltas, strict=True))
            assert float(torch.linalg.norm(d.double() - want) / torch.linalg.norm(want)) < 1e-5, n
    trained = active_factor(rounds - 1)
    assert all(k.endswith(trained) or k in fed.adapted.head_state_names() for k in updates[0].payload)


def test_upload_and_download_sizes_follow_the_phase_and_charge_the_catch_up() -> None:
    rounds = 6
    sim = Simulator(tiny_config("tiny-llama", "rolora", federation={"fraction": 0.67, "rounds": rounds}), progress=False)
    res = sim.run()
    fed = sim.fed
    head = sum(t.numel() for t in fed.adapted.get_state(fed.adapted.head_state_names()).values())
    r = fed.cfg.adapter.rank
    dims = [(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]
    assert len(set(dims)) > 1, "layers with d_out != d_in make the two phases differ in size"
    full = sum(r * (do + di) for do, di in dims) + head
    # Every client holds the round-0 adapter (derived from the shared seed); afterwards what it last received.
    held = dict.fromkeys(range(3), 0)
    catch_ups = 0
    for row in res.rows[1:]:
        aggregations = row["round"] - 1  # no round is skipped here
        up = sum(RoLoRA.phase_params(r, do, di, aggregations)[0] for do, di in dims) + head
        assert row["upload_params_per_client"] == up
        trimmed = sum(RoLoRA.phase_params(r, do, di, aggregations)[1] for do, di in dims) + head
        downs = []
        for c in fed.sample_clients(row["round"]):
            in_step = aggregations >= 1 and held[c] == aggregations - 1
            downs.append(trimmed if in_step else full)
            catch_ups += aggregations >= 1 and not in_step
            held[c] = aggregations
        assert row["download_bytes_round"] == 4 * sum(downs), row["round"]
    assert catch_ups, "with fraction 0.67 some client must miss a round and be sent both factors"


def test_a_skipped_round_resends_the_factor_the_client_trained_locally() -> None:
    method = RoLoRA(scaling=1.0)
    broadcast = {"l.lora_A.weight": torch.zeros(2, 3), "l.lora_B.weight": torch.zeros(3, 2), "head.weight": torch.zeros(1)}
    # The 3rd aggregation closed the round that started after 2 (a B round): an in-step client needs only B.
    assert set(method.download(broadcast, held=2, aggregations=3)) == {"l.lora_B.weight", "head.weight"}
    assert set(method.download(broadcast, held=1, aggregations=2)) == {"l.lora_A.weight", "head.weight"}
    assert set(method.download(broadcast, held=3, aggregations=3)) == set(broadcast)  # skipped: its A is its own
    assert set(method.download(broadcast, held=-1, aggregations=3)) == set(broadcast)  # unknown state
    assert set(method.download(broadcast, held=0, aggregations=3)) == set(broadcast)  # missed rounds
