"""Communication accounting equals DESIGN.md section 4, measured on real payloads."""

from __future__ import annotations

import pytest

from fedsb.comm.accounting import (
    LayerDims,
    layer_round_params,
    one_time_params,
    payload_bytes,
    payload_params,
    round_params,
)
from fedsb.core.client import train_client
from fedsb.methods.base import ClientUpdate
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


def test_formulas_per_layer() -> None:
    r, d_out, d_in = 4, 6, 10
    assert layer_round_params("fed-sb", r, d_out, d_in, 5) == (16, 16)
    assert layer_round_params("fedit", r, d_out, d_in, 5) == (64, 64)
    assert layer_round_params("ffa-lora", r, d_out, d_in, 5) == (24, 24)
    assert layer_round_params("fedsvd", r, d_out, d_in, 5) == (24, 64)  # A travels down with B
    assert layer_round_params("fedex-lora", r, d_out, d_in, 5) == (64, 64 + 60)
    assert layer_round_params("flora", r, d_out, d_in, 5) == (64, 5 * 64)
    assert layer_round_params("flora", r, d_out, d_in, 10)[1] == 2 * layer_round_params("flora", r, d_out, d_in, 5)[1]
    assert one_time_params("fed-sb", r, [LayerDims(d_out, d_in)]) == {"download": 64, "upload": 60}
    assert one_time_params("fedit", r, [LayerDims(d_out, d_in)]) == {"download": 0, "upload": 0}


@pytest.mark.parametrize("clients", [2, 3])
@pytest.mark.parametrize("method", ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora", "fedsvd"])
def test_measured_payloads_equal_the_formulas(method: str, clients: int) -> None:
    fed = tiny_federation("tiny-bert", method, federation={"clients": clients, "partition": "iid"})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)
    updates = []
    for c in range(clients):
        fed.method.load_adapter(fed.adapted, payload)
        train_client(fed, c, 1, 0)
        updates.append(ClientUpdate(str(c), fed.method.client_update(fed.adapted), len(fed.shards[c])))
    sim.state = fed.method.aggregate(sim.state, updates)
    steady_down = fed.method.broadcast(sim.state)  # round 2's download carries FedEx/FLoRA base updates
    head = sum(p.numel() for p in fed.adapted.head_parameters())
    dims = [LayerDims(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]
    up, down = round_params(method, 4, dims, clients, head)
    assert payload_params(updates[0].payload) == up
    assert payload_params(steady_down) == down
    assert payload_bytes(steady_down, "float32") == 4 * down
    assert payload_bytes(steady_down, "bfloat16") == 2 * down
    one_time = fed.adapted.get_state(fed.method.one_time_names(fed.adapted))
    assert payload_params(one_time) == one_time_params(method, 4, dims)["download"]


def test_summary_reports_comm_and_one_time_costs() -> None:
    # dense init upload, float32 B/A broadcast (tests/comm/test_one_time.py has the other broadcast formats)
    fed = tiny_federation("tiny-bert", "fed-sb", federation={"rounds": 1}, init={"source": "federated", "broadcast_bits": 32})
    res = Simulator(fed.cfg, fed=fed, progress=False).run()
    c = res.summary["comm"]
    per_layer = [(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]
    dense = sum(o * i for o, i in per_layer)
    assert c["one_time"]["init_upload_params_per_client"] == dense
    assert c["one_time"]["broadcast_params_per_client"] == sum(4 * (o + i) for o, i in per_layer)
    assert c["upload_bytes_total"] == 3 * 4 * c["upload_params_per_client_round"]
    assert c["one_time_bytes"] == 3 * 4 * (dense + sum(4 * (o + i) for o, i in per_layer))


@pytest.mark.parametrize("source", ["federated", "federated-sign", "federated-lowrank", "public"])
def test_summary_one_time_formula_equals_what_travelled(source: str) -> None:
    fed = tiny_federation("tiny-bert", "fed-sb", federation={"rounds": 1}, init={"source": source})
    res = Simulator(fed.cfg, fed=fed, progress=False).run()
    c = res.summary["comm"]
    analytic = c["analytic_one_time_per_client"]
    assert analytic["upload_bytes"] == c["one_time"]["init_upload_bytes_per_client"]
    assert analytic["download_params"] == c["one_time"]["broadcast_params_per_client"]
    assert (analytic["upload_bytes"] == 0) == (source == "public")
