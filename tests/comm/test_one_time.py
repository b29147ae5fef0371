"""The one-time traffic of Fed-SB in the ledger: the encoded B/A broadcast counted exactly (codes + scales), the same
in the simulator and over Flower, and every Flower node holding bit for bit the server's decoded bases."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.flower.clientapp import STATE_ONETIME
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.records import from_record
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.init.broadcast import expected_broadcast, layer_dims
from fedsb.init.sources import expected_upload
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_ledger_one_time_bytes_equal_the_formula(bits: int) -> None:
    cfg = tiny_config(federation={"rounds": 1}, init={"broadcast_bits": bits})
    sim = Simulator(cfg, progress=False)
    res = sim.run()
    dims = layer_dims(sim.fed.adapted)
    d_out_in = {n: (d_out, d_in) for n, (d_out, d_in, _) in dims.items()}
    r, k = cfg.adapter.rank, cfg.federation.clients
    per_layer = {  # bytes of B (d_out x r) and A (r x d_in); below 16 bits one float32 scale per column of B, row of A
        32: lambda o, i: 4 * r * (o + i),
        16: lambda o, i: 2 * r * (o + i),
        8: lambda o, i: r * (o + i) + 2 * 4 * r,
        4: lambda o, i: math.ceil(4 * o * r / 8) + math.ceil(4 * i * r / 8) + 2 * 4 * r,
    }[bits]
    down = sum(per_layer(d_out, d_in) for d_out, d_in, _ in dims.values())
    assert expected_broadcast(dims, bits).bytes == down
    up = expected_upload(cfg.init.source, d_out_in, r, cfg.init.lowrank_bits)["bytes"]  # r' = r at 8 bits
    assert sim.comm.one_time_download_bytes == k * down
    assert sim.comm.one_time_upload_bytes == k * up
    assert sim.one_time["broadcast_bytes_per_client"] == down
    assert sim.one_time["broadcast_params_per_client"] == sum(r * (d_out + d_in) for d_out, d_in, _ in dims.values())
    assert res.summary["comm"]["one_time_bytes"] == k * (up + down)


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_flower_equals_the_simulator_and_nodes_hold_the_servers_bases(bits: int) -> None:
    cfg = tiny_config(init={"broadcast_bits": bits})
    s = FedsbStrategy(cfg, FlowerOptions())
    grid = FakeGrid(client_app, cfg.federation.clients)
    s.run(grid, context=server_context())
    sim = Simulator(tiny_config(init={"broadcast_bits": bits}), progress=False).run()
    assert dataclasses.asdict(s.comm) == dataclasses.asdict(sim.comm)
    assert s.rows[0]["wire_download_payload_bytes"] == s.comm.one_time_download_bytes  # what the grid carried
    for k, v in sim.state.adapter.items():
        assert float((s.state.adapter[k] - v).abs().max()) <= 1e-6
    server = s.fed.adapted.get_state(s.fed.method.one_time_names(s.fed.adapted))
    sync = [m for m in grid.sent if m.metadata.message_type == "query.sync"]
    assert len(sync) == 3 and all("onetime-encoded" in m.content.array_records for m in sync)
    for ctx in grid.contexts.values():
        held = from_record(ctx.state.array_records[STATE_ONETIME])
        assert set(held) == set(server) and all(torch.equal(held[n], server[n]) for n in server)
