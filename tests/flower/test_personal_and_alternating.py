"""Over Flower: FedSA-LoRA nodes keep B and the head in their own state and never send them; RoLoRA nodes
receive only the factor the last aggregation changed, catch up when they missed rounds, and end where the
simulator ends."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedsb.flower.clientapp import STATE_GLOBAL, STATE_LOCAL
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.records import from_record
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config


def run_both(method: str, model: str = "tiny-bert", **over):
    cfg = tiny_config(model, method, **over)
    s = FedsbStrategy(cfg, FlowerOptions())
    grid = FakeGrid(client_app, cfg.federation.clients)
    replies: list = []
    real = grid.send_and_receive

    def spy(messages, *, timeout=None):
        out = real(messages, timeout=timeout)
        replies.extend(out)
        return out

    grid.send_and_receive = spy  # type: ignore[method-assign]
    s.run(grid, context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    sim = Simulator(cfg, progress=False)
    return s, grid, replies, sim, sim.run()


def arrays_of(msg) -> set[str]:
    return {k for rec in msg.content.array_records.values() for k in rec}


def test_fedsa_nodes_never_send_b_or_the_head_and_keep_them() -> None:
    s, grid, replies, sim, res = run_both("fedsa-lora", federation={"rounds": 3, "fraction": 0.67})
    head = set(s.fed.adapted.head_state_names())
    msgs = [m for m in grid.sent + replies if not m.has_error()]
    names = set().union(*(arrays_of(m) for m in msgs))
    assert any(n.endswith("lora_A.weight") for n in names)
    assert not any(n.endswith("lora_B.weight") or n in head for n in names), sorted(names)[:5]
    # Each node's own B and head live in its Context.state and equal the simulator's client state.
    for i, node in enumerate(grid.nodes):
        st = grid.contexts[node].state.array_records
        if i not in sim.local_state:
            assert STATE_LOCAL not in st
            continue
        own = from_record(st[STATE_LOCAL])
        assert set(own) == set(sim.local_state[i])
        for k, v in own.items():
            assert float((v - sim.local_state[i][k]).abs().max()) <= 1e-6, k
    for k, v in s.state.adapter.items():
        assert float((v - res.state.adapter[k]).abs().max()) <= 1e-6
    assert s.rows[-1]["personal_accuracy"] == sim.rows[-1]["personal_accuracy"]
    assert s.rows[-1]["accuracy_min"] == sim.rows[-1]["accuracy_min"]


def test_rolora_nodes_get_the_changed_factor_or_catch_up_and_match_the_simulator() -> None:
    s, grid, _, sim, res = run_both("rolora", "tiny-llama", federation={"rounds": 5, "fraction": 0.67})
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    sizes = {len(arrays_of(m)) for m in trains}
    assert len(sizes) >= 2, "some messages carry one factor (in step), others both (round 1 or a catch-up)"
    assert all(STATE_GLOBAL in grid.contexts[n].state.array_records for n in {m.metadata.dst_node_id for m in trains})
    for k, v in s.state.adapter.items():
        assert float((v - res.state.adapter[k]).abs().max()) <= 1e-6, k
    assert s.comm.download_bytes == res.comm.download_bytes
    assert s.rows[-1]["accuracy"] == res.rows[-1]["accuracy"]
