"""Streaming aggregation equals the list-based ``Method.aggregate`` for every method and weighting."""

from __future__ import annotations

import pytest
import torch

from fedsb.methods import METHODS, ClientUpdate, ServerState
from fedsb.methods.base import is_base_update
from fedsb.methods.streaming import streaming_aggregator

LAYERS = {"enc.0.q": (6, 5), "enc.1.v": (4, 7)}  # name -> (d_out, d_in)
R = 3


def payload(method: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"head.weight": torch.randn(2, 5, generator=g)}
    for n, (d_out, d_in) in LAYERS.items():
        if method == "fed-sb":
            out[f"{n}.lora_R.weight"] = torch.randn(R, R, generator=g)
        elif method == "ffa-lora":
            out[f"{n}.lora_B.weight"] = torch.randn(d_out, R, generator=g)
        else:
            out[f"{n}.lora_A.weight"] = torch.randn(R, d_in, generator=g)
            out[f"{n}.lora_B.weight"] = torch.randn(d_out, R, generator=g)
    return out


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
@pytest.mark.parametrize("name", list(METHODS))
def test_streaming_equals_list_aggregate(name: str, weighting: str) -> None:
    g = torch.Generator().manual_seed(0)
    method = METHODS[name](scaling=0.5, weighting=weighting, seed=0)
    updates = [ClientUpdate(str(i), payload(name, g), num_examples=n) for i, n in enumerate([3, 10, 1, 7])]
    names = ["head.weight"] if name == "flora" else list(updates[0].payload)
    state = ServerState(round=2, adapter={n: torch.zeros_like(updates[0].payload[n]) for n in names})
    expected = method.aggregate(state, updates)
    agg = streaming_aggregator(method, state)
    for u in updates:
        agg.add(u)
    got = agg.result()
    assert got.round == expected.round == 3
    assert set(got.adapter) == set(expected.adapter) and set(got.pending) == set(expected.pending)
    for k in expected.adapter:
        torch.testing.assert_close(got.adapter[k], expected.adapter[k], rtol=1e-6, atol=1e-7)
    for k in expected.pending:
        assert is_base_update(k)
        torch.testing.assert_close(got.pending[k], expected.pending[k], rtol=1e-6, atol=1e-6)
    if name in ("fed-sb", "fedit"):
        # Example weighting must differ from the plain mean on these unequal shards (the test can fail).
        plain = torch.stack([u.payload[names[-1]] for u in updates]).mean(0)
        assert torch.allclose(got.adapter[names[-1]], plain) == (weighting == "uniform")


def test_fedex_residual_makes_the_aggregate_exact() -> None:
    g = torch.Generator().manual_seed(1)
    method = METHODS["fedex-lora"](scaling=2.0, weighting="examples")
    updates = [ClientUpdate(str(i), payload("fedex-lora", g), num_examples=n) for i, n in enumerate([2, 5])]
    state = ServerState(round=0, adapter={n: torch.zeros_like(t) for n, t in updates[0].payload.items()})
    agg = streaming_aggregator(method, state)
    for u in updates:
        agg.add(u)
    out = agg.result()
    p = [2 / 7, 5 / 7]
    for n in LAYERS:
        a, b = f"{n}.lora_A.weight", f"{n}.lora_B.weight"
        want = sum(w * 2.0 * u.payload[b] @ u.payload[a] for w, u in zip(p, updates, strict=True))
        got = 2.0 * out.adapter[b] @ out.adapter[a] + out.pending[f"{n}.residual"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_empty_stream_is_an_error() -> None:
    method = METHODS["fed-sb"](scaling=1.0)
    with pytest.raises(ValueError, match="no client updates"):
        streaming_aggregator(method, ServerState(0, {"x": torch.zeros(1)})).result()
