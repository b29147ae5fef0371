"""Fed-SB stays exact on quantised one-time bases: every client decodes the server's B/A message to the very bases
the server runs on, so the server's ``s B (mean R) A`` is the weighted mean of the clients' ``s B R_i A``."""

from __future__ import annotations

import pytest
import torch

from fedsb.core.federation import initialise_adapters
from fedsb.init.broadcast import decode_bases, layer_dims
from fedsb.methods.base import aggregation_weights
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation
from tests.methods.test_exactness import global_after, one_round, rel_err


@pytest.mark.parametrize("bits", [8, 4])
def test_mean_of_client_products_on_decoded_bases_equals_the_server_product(bits: int) -> None:
    fed = tiny_federation("tiny-bert", "fed-sb", federation={"partition": "dirichlet", "dirichlet_alpha": 0.5},
                          init={"broadcast_bits": bits})
    sizes = [len(s) for s in fed.shards]
    assert len(set(sizes)) == 3, f"shards must be unequal, got {sizes}"
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    message = initialise_adapters(fed)["broadcast"]  # the setup of Simulator.initialise, keeping the message
    sim.state = fed.method.initial_state(fed.adapted)
    # what a client holds after the sync round: the server's message decoded on its side, bit for bit the server's
    held = decode_bases(message, layer_dims(fed.adapted), bits)
    server = fed.adapted.get_state(fed.method.one_time_names(fed.adapted))
    assert set(held) == set(server) and all(torch.equal(held[k], server[k]) for k in server)
    payload = fed.method.broadcast(sim.state)
    fed.method.load_adapter(fed.adapted, payload)
    updates, deltas, _, _ = one_round(sim, 1, payload)
    p = aggregation_weights(updates, "examples")
    global_after(sim, updates)
    merged = fed.adapted.delta_weights()
    for name, layer in fed.adapted.layers.items():
        b, a = held[f"{name}.lora_B.weight"].double(), held[f"{name}.lora_A.weight"].double()
        # brute force: each client's s B R_i A from its uploaded R_i, weighted by its examples, in float64
        brute = sum(w * layer.scaling * b @ u.payload[f"{name}.lora_R.weight"].double() @ a
                    for w, u in zip(p, updates, strict=True))
        assert rel_err(merged[name].double(), brute) < 1e-6  # the server's float32 B (mean R) A
        assert rel_err(sum(w * d[name] for w, d in zip(p, deltas, strict=True)), brute) < 1e-6  # the clients' models
