"""Exact aggregation: after a round, the global weight update equals the weighted mean of the clients' updates.

For every exact method (fed-sb, ffa-lora, fedex-lora, flora, fedsvd) on tiny random BERT, Llama and GPT-2 (Conv1D)
models with 3 clients of unequal size, over two rounds (so FedEx/FLoRA residuals from round 1 are in play);
FedIT is shown to be inexact.
"""

from __future__ import annotations

import pytest
import torch

from fedsb.core.client import train_client
from fedsb.core.federation import Federation
from fedsb.methods.base import ClientUpdate, aggregation_weights
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config, tiny_federation

EXACT = ["fed-sb", "ffa-lora", "fedex-lora", "flora", "fedsvd"]


def one_round(sim: Simulator, round_idx: int, payload: dict[str, torch.Tensor]):
    """Train every client from ``payload``; return their updates, their merged deltas, and the start deltas."""
    fed: Federation = sim.fed
    start = {n: d.double() for n, d in fed.adapted.delta_weights().items()}
    updates, deltas, heads = [], [], []
    for c in range(len(fed.shards)):
        fed.method.load_adapter(fed.adapted, payload)
        metrics = train_client(fed, c, round_idx, 0)
        updates.append(ClientUpdate(str(c), fed.method.client_update(fed.adapted), len(fed.shards[c]), metrics))
        deltas.append({n: d.double() for n, d in fed.adapted.delta_weights().items()})
        heads.append(fed.adapted.get_state(fed.adapted.head_state_names()))
    return updates, deltas, heads, start


def global_after(sim: Simulator, updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
    fed = sim.fed
    sim.state = fed.method.aggregate(sim.state, updates)
    payload = fed.method.broadcast(sim.state)
    fed.method.apply_base_update(fed.adapted, payload)
    fed.method.load_adapter(fed.adapted, payload)
    return payload


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("method", EXACT)
def test_global_update_is_the_weighted_mean_of_client_updates(model: str, method: str) -> None:
    fed = tiny_federation(model, method, federation={"partition": "dirichlet", "dirichlet_alpha": 0.5})
    sizes = [len(s) for s in fed.shards]
    assert len(set(sizes)) == 3, f"shards must be unequal, got {sizes}"
    sim = Simulator(tiny_config(model, method), fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)
    fed.method.load_adapter(fed.adapted, payload)
    for r in (1, 2):
        updates, deltas, heads, start = one_round(sim, r, payload)
        p = aggregation_weights(updates, "examples")
        assert p != [1 / 3] * 3
        payload = global_after(sim, updates)
        glob = {n: d.double() for n, d in fed.adapted.delta_weights().items()}
        for name in glob:
            mean_delta = sum(w * d[name] for w, d in zip(p, deltas, strict=True))
            assert rel_err(glob[name], mean_delta) < 1e-6, (r, name)
            # The same holds for the round's update (global minus start) against the mean client update.
            mean_update = mean_delta - start[name]
            assert float(torch.linalg.norm(mean_update)) > 0
            assert rel_err(glob[name] - start[name], mean_update) < 1e-4, (r, name)
        head_now = fed.adapted.get_state(fed.adapted.head_state_names())
        for k, v in head_now.items():
            torch.testing.assert_close(v, sum(w * h[k] for w, h in zip(p, heads, strict=True)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gpt2"])
def test_fedit_is_not_exact(model: str) -> None:
    fed = tiny_federation(model, "fedit", train={"lr": 5e-2, "local_steps": 3, "batch_size": 4, "threads": 1})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)
    fed.method.load_adapter(fed.adapted, payload)
    updates, deltas, _, _ = one_round(sim, 1, payload)
    p = aggregation_weights(updates, "examples")
    global_after(sim, updates)
    errs = []
    for name, d in fed.adapted.delta_weights().items():
        mean_delta = sum(w * dd[name] for w, dd in zip(p, deltas, strict=True))
        errs.append(rel_err(d.double(), mean_delta))
    assert max(errs) > 1e-3, f"FedIT should be inexact (mean(B)mean(A) != mean(BA)); max rel err {max(errs):.2e}"


def test_uniform_weighting_is_offered() -> None:
    ups = [ClientUpdate("a", {}, 10), ClientUpdate("b", {}, 30)]
    assert aggregation_weights(ups, "examples") == [0.25, 0.75]
    assert aggregation_weights(ups, "uniform") == [0.5, 0.5]


def test_clients_of_a_round_start_from_the_same_broadcast_state() -> None:
    fed = tiny_federation("tiny-bert", "fedex-lora")
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)
    starts = []
    for c in range(3):
        fed.method.load_adapter(fed.adapted, payload)
        starts.append(fed.adapted.get_state())
        train_client(fed, c, 1, 0)
    for s in starts[1:]:
        assert all(torch.equal(s[k], starts[0][k]) for k in s)
