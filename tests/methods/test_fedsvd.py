"""FedSVD: the server's re-factorisation keeps the weighted-mean product, orthonormalises A, keeps B = U S,
is bit-reproducible across processes; payloads match the formula; tiny runs complete (with and without DP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsb.comm.accounting import layer_round_params
from fedsb.core.client import train_client
from fedsb.errors import UsageError
from fedsb.methods import METHODS, method_options
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.methods.fedsvd import FedSVD, refactorise
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config, tiny_federation

R = 4
LAYERS = {"enc.q": (12, 20), "enc.v": (20, 12)}  # name: (d_out, d_in); one wide, one tall
SIZES = [3, 10, 27]  # unequal client sizes: "examples" and "uniform" weightings differ


def synthetic(seed: int = 0, rank: int = R, layers: dict[str, tuple[int, int]] = LAYERS
              ) -> tuple[ServerState, list[ClientUpdate]]:
    """A server state as after init (A kaiming-like, not orthonormal; B = 0; a head) and three clients' uploads."""
    g = torch.Generator().manual_seed(seed)
    adapter: dict[str, torch.Tensor] = {}
    for name, (d_out, d_in) in layers.items():
        adapter[f"{name}.lora_A.weight"] = (torch.rand(rank, d_in, generator=g) * 2 - 1) / d_in**0.5
        adapter[f"{name}.lora_B.weight"] = torch.zeros(d_out, rank)
    adapter["head.weight"] = torch.zeros(2, 5)
    uploads = [ClientUpdate(str(k), {n: torch.randn(t.shape, generator=g) for n, t in adapter.items() if ".lora_A." not in n}, m)
               for k, m in enumerate(SIZES)]
    return ServerState(0, adapter), uploads


def weights_of(weighting: str) -> list[float]:
    return [m / sum(SIZES) for m in SIZES] if weighting == "examples" else [1 / len(SIZES)] * len(SIZES)


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_product_after_svd_is_the_weighted_mean_of_client_products(weighting: str) -> None:
    scaling = 2.0  # alpha / r != 1: the scale must stay out of the factors
    state, ups = synthetic()
    new = FedSVD(scaling, weighting=weighting).aggregate(state, ups)
    p = weights_of(weighting)
    other = weights_of("uniform" if weighting == "examples" else "examples")
    for name in LAYERS:
        a_prev = state.adapter[f"{name}.lora_A.weight"].double()
        want = sum(w * scaling * u.payload[f"{name}.lora_B.weight"].double() @ a_prev for w, u in zip(p, ups, strict=True))
        wrong = sum(w * scaling * u.payload[f"{name}.lora_B.weight"].double() @ a_prev for w, u in zip(other, ups, strict=True))
        assert torch.linalg.norm(want - wrong) / torch.linalg.norm(want) > 1e-2  # the weighting matters here
        got = scaling * new.adapter[f"{name}.lora_B.weight"] @ new.adapter[f"{name}.lora_A.weight"]  # float32
        assert got.dtype == torch.float32
        assert float(torch.linalg.norm(got.double() - want) / torch.linalg.norm(want)) < 1e-5, name
    head = sum(w * u.payload["head.weight"] for w, u in zip(p, ups, strict=True))
    torch.testing.assert_close(new.adapter["head.weight"], head, rtol=1e-6, atol=1e-7)
    assert new.round == 1 and list(new.adapter) == list(state.adapter)


def test_a_has_orthonormal_rows_and_b_is_u_times_s() -> None:
    state, ups = synthetic()
    new = FedSVD(1.0).aggregate(state, ups)
    eye = torch.eye(R, dtype=torch.float64)
    for name in LAYERS:
        a_prev = state.adapter[f"{name}.lora_A.weight"].double()
        assert float((a_prev @ a_prev.T - eye).abs().max()) > 0.1  # the init is not orthonormal: the SVD made it so
        a = new.adapter[f"{name}.lora_A.weight"].double()
        b = new.adapter[f"{name}.lora_B.weight"].double()
        assert float((a @ a.T - eye).abs().max()) < 1e-6, name
        # B is U S, not U and not reset: its columns are orthogonal with norms the singular values of B A, descending.
        mean_b = sum(w * u.payload[f"{name}.lora_B.weight"].double() for w, u in zip(weights_of("examples"), ups, strict=True))
        s = torch.linalg.svdvals(mean_b @ a_prev)[:R]
        torch.testing.assert_close(b.norm(dim=0), s, rtol=1e-5, atol=1e-7)
        gram = b.T @ b
        assert float((gram - torch.diag(torch.diag(gram))).abs().max()) < 1e-5 * float(s[0]) ** 2
        assert float(b.norm()) > 1.0


def test_the_factorisation_depends_only_on_the_product() -> None:
    """The sign convention pins U and V: two factorisations of one product give the same factors (so any party
    computes the same A), and the largest entry of each column of B is positive."""
    g = torch.Generator().manual_seed(3)
    b, a = torch.randn(30, R, generator=g, dtype=torch.float64), torch.randn(R, 50, generator=g, dtype=torch.float64)
    for trial in range(5):
        q, _ = torch.linalg.qr(torch.randn(R, R, generator=g, dtype=torch.float64))
        q = q @ torch.diag(torch.tensor([(-1.0) ** (trial + j) for j in range(R)], dtype=torch.float64))
        b1, a1 = refactorise(b, a)
        b2, a2 = refactorise(b @ q, q.T @ a)  # the same product B A
        torch.testing.assert_close(b1, b2, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a1, a2, rtol=1e-4, atol=1e-5)
        cols = torch.arange(R)
        assert bool((b1[b1.abs().argmax(dim=0), cols] > 0).all())


def test_zero_b_stays_zero_and_a_orthonormal() -> None:
    b, a = refactorise(torch.zeros(12, R), torch.randn(R, 20))
    assert torch.equal(b, torch.zeros(12, R))
    assert float((a @ a.T - torch.eye(R)).abs().max()) < 1e-6


def test_svd_period_refactorises_every_nth_aggregation() -> None:
    method = FedSVD(1.0, options=method_options("fedsvd", {"svd_period": 2}))
    state, ups = synthetic()
    first = method.aggregate(state, ups)
    for name in LAYERS:  # aggregation 1: a plain mean on the old A
        assert torch.equal(first.adapter[f"{name}.lora_A.weight"], state.adapter[f"{name}.lora_A.weight"])
    second = method.aggregate(first, ups)  # aggregation 2: re-factorised
    every = FedSVD(1.0).aggregate(first, ups)
    for name in LAYERS:
        a = second.adapter[f"{name}.lora_A.weight"]
        assert float((a @ a.T - torch.eye(R)).abs().max()) < 1e-6
        assert torch.equal(a, every.adapter[f"{name}.lora_A.weight"])


def test_options_are_validated() -> None:
    assert FedSVD(1.0).options.svd_period == 1
    with pytest.raises(UsageError, match="svd_period"):
        method_options("fedsvd", {"svd_period": 0})
    with pytest.raises(UsageError, match="svd_perod"):
        method_options("fedsvd", {"svd_perod": 2})
    fed = tiny_federation("tiny-bert", "fedsvd", method_options={"svd_period": 3})  # the config's [method_options]
    assert isinstance(fed.method, FedSVD) and fed.method.options.svd_period == 3


# A fixed aggregation in a fresh interpreter, with another thread count; prints the result's bytes.
SCRIPT = """
import json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
from tests.methods.test_fedsvd import synthetic
from fedsb.methods.fedsvd import FedSVD
state, ups = synthetic(7, 8, {{"big.q": (384, 256), "big.v": (256, 384)}})
new = FedSVD(0.5).aggregate(state, ups)
print(json.dumps({{k: v.numpy().tobytes().hex() for k, v in new.adapter.items()}}))
"""


def test_server_svd_is_bit_identical_across_processes() -> None:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=root)], capture_output=True, text=True, env=env,
                         timeout=300, check=True, cwd=root).stdout
    theirs = json.loads(out)
    state, ups = synthetic(7, 8, {"big.q": (384, 256), "big.v": (256, 384)})
    ours = FedSVD(0.5).aggregate(state, ups).adapter
    assert set(theirs) == set(ours)
    for k, v in ours.items():
        assert v.numpy().tobytes().hex() == theirs[k], k


def test_payloads_match_the_formula_per_layer() -> None:
    fed = tiny_federation("tiny-bert", "fedsvd", federation={"partition": "iid"})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)
    fed.method.load_adapter(fed.adapted, payload)
    train_client(fed, 0, 1, 0)
    up = fed.method.client_update(fed.adapted)
    updates = [ClientUpdate(str(c), up, len(fed.shards[c])) for c in range(3)]
    down = fed.method.broadcast(fed.method.aggregate(sim.state, updates))
    head = set(fed.adapted.head_state_names())
    assert head and head <= set(up) and head <= set(down)
    for name, layer in fed.adapted.layers.items():
        r, d_out, d_in = fed.cfg.adapter.rank, layer.d_out, layer.d_in
        want_up, want_down = layer_round_params("fedsvd", r, d_out, d_in, 3)
        assert (want_up, want_down) == (r * d_out, r * (d_in + d_out))
        assert sum(t.numel() for k, t in up.items() if k.startswith(name + ".")) == want_up
        assert f"{name}.lora_A.weight" not in up
        for p in (payload, down):
            assert sum(t.numel() for k, t in p.items() if k.startswith(name + ".")) == want_down
    assert set(up) == set(down) - {f"{n}.lora_A.weight" for n in fed.adapted.layers}


def test_tiny_run_completes_and_the_server_holds_an_orthonormal_a() -> None:
    result = Simulator(tiny_config(method="fedsvd"), progress=False).run()
    assert [r["round"] for r in result.rows] == [0, 1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in result.rows)
    assert METHODS["fedsvd"].default_lr(4) == result.fed.lr
    for name, layer in result.fed.adapted.layers.items():
        a = result.state.adapter[f"{name}.lora_A.weight"]
        assert float((a @ a.T - torch.eye(a.shape[0])).abs().max()) < 1e-5
        assert torch.equal(layer.lora_A.weight.detach().cpu(), a)  # the server's model holds the broadcast
        assert float(layer.lora_B.weight.detach().norm()) > 0
