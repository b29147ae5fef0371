"""RAVAN adapter layer: the multi-head forward, trainable sets per active head, the block-diagonal core,
the data-free bases (orthonormal, fallback, deterministic across processes) and the refused set-ups."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.layer import AdapterLayer, ravan_bases
from fedsb.adapters.model import AdaptedModel
from fedsb.errors import UsageError

HEADS, R_H = 4, 2


def ravan(base: nn.Module | None = None, heads: int = HEADS, r_h: int = R_H) -> AdapterLayer:
    """A RAVAN layer with random bases, random H_i and scales != 1 (every term of the forward is informative)."""
    torch.manual_seed(0)
    layer = AdapterLayer(base or nn.Linear(16, 12), "ravan", heads * r_h, alpha=99.0, heads=heads)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.lora_A.weight.normal_()
        layer.lora_B.weight.normal_()
        assert layer.lora_H is not None and layer.lora_s is not None
        for i, (h, s) in enumerate(zip(layer.lora_H, layer.lora_s, strict=True)):
            h.weight.normal_()
            s.weight.fill_(0.5 + i)
    return layer


def per_head_delta(layer: AdapterLayer) -> torch.Tensor:
    """``sum_i s_i B_i H_i A_i`` from explicit per-head slices (no block-diagonal, no scale)."""
    assert layer.lora_H is not None and layer.lora_s is not None
    r = layer.head_rank
    total = torch.zeros(layer.d_out, layer.d_in)
    for i in range(layer.heads):
        b_i = layer.lora_B.weight[:, i * r : (i + 1) * r]
        a_i = layer.lora_A.weight[i * r : (i + 1) * r]
        total += layer.lora_s[i].weight * b_i @ layer.lora_H[i].weight @ a_i
    return total.detach()


class Toy(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.v = nn.Linear(d, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.v(torch.tanh(self.q(x)))))


def test_forward_is_base_plus_the_sum_of_scaled_heads_without_alpha() -> None:
    layer = ravan()
    x = torch.randn(3, 5, 16)
    w = layer.base.weight + per_head_delta(layer)
    torch.testing.assert_close(layer(x), x @ w.T + layer.base.bias, rtol=1e-5, atol=1e-5)
    assert layer.scaling == 1.0  # alpha = 99 is ignored: s_i play the role of alpha / r
    torch.testing.assert_close(layer.adapter_product(), per_head_delta(layer), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), per_head_delta(layer), rtol=1e-5, atol=1e-5)


def test_conv1d_base_is_handled_in_linear_layout() -> None:
    layer = ravan(Conv1D(12, 16))
    x = torch.randn(2, 3, 16)
    w = layer.base.weight.T + per_head_delta(layer)
    torch.testing.assert_close(layer(x), x @ w.T + layer.base.bias, rtol=1e-5, atol=1e-5)


def test_core_matrix_is_the_block_diagonal_of_scaled_heads() -> None:
    layer = ravan()
    core = layer.core_matrix()
    assert core is not None and core.shape == (HEADS * R_H, HEADS * R_H)
    assert layer.lora_H is not None and layer.lora_s is not None
    for i in range(HEADS):
        block = core[i * R_H : (i + 1) * R_H, i * R_H : (i + 1) * R_H]
        torch.testing.assert_close(block, layer.lora_s[i].weight * layer.lora_H[i].weight)
    off = core.clone()
    for i in range(HEADS):
        off[i * R_H : (i + 1) * R_H, i * R_H : (i + 1) * R_H] = 0
    assert torch.count_nonzero(off) == 0
    sb = AdapterLayer(nn.Linear(6, 5), "lora-sb", 3, 3.0)
    assert sb.core_matrix() is sb.lora_R.weight  # type: ignore[union-attr]
    assert AdapterLayer(nn.Linear(6, 5), "lora", 3, 3.0).core_matrix() is None


def test_fresh_layer_starts_at_w0_with_unit_scales() -> None:
    layer = AdapterLayer(nn.Linear(16, 12), "ravan", 8, 8.0, heads=4)
    assert layer.lora_H is not None and layer.lora_s is not None
    assert all(torch.count_nonzero(h.weight) == 0 for h in layer.lora_H)
    assert all(float(s.weight.detach()) == 1.0 for s in layer.lora_s)
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_only_the_active_heads_train() -> None:
    layer = ravan()
    every = {f"lora_H.{i}.weight" for i in range(HEADS)} | {f"lora_s.{i}.weight" for i in range(HEADS)}
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == every
    layer.set_active_heads([3, 1])
    want = {"lora_H.1.weight", "lora_H.3.weight", "lora_s.1.weight", "lora_s.3.weight"}
    assert set(layer.trainable_names()) == want
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == want
    layer(torch.randn(4, 16)).sum().backward()
    assert layer.lora_H is not None
    assert layer.lora_H[0].weight.grad is None and layer.lora_H[1].weight.grad is not None
    assert layer.lora_A.weight.grad is None and layer.lora_B.weight.grad is None
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError, match="active heads"):
            layer.set_active_heads(bad)


def test_constant_scale_variant_trains_only_h() -> None:
    adapted = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, heads=4, trainable_scale=False)
    names = adapted.trainable_state_names()
    assert names and all(".lora_H." in n for n in names)
    adapted.set_active_heads([2])
    assert adapted.trainable_state_names() == ["q.lora_H.2.weight", "v.lora_H.2.weight"]


def test_adapted_model_names_and_head_subsets() -> None:
    adapted = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, head=["out"], heads=4)
    assert adapted.rank == 8 and adapted.layers["q"].head_rank == 2
    assert "q.lora_H.3.weight" in adapted.adapter_state_names() and "v.lora_s.0.weight" in adapted.adapter_state_names()
    adapted.set_active_heads([0, 2])
    assert adapted.active_heads == (0, 2)
    assert adapted.trainable_state_names() == [
        "q.lora_H.0.weight", "q.lora_H.2.weight", "q.lora_s.0.weight", "q.lora_s.2.weight",
        "v.lora_H.0.weight", "v.lora_H.2.weight", "v.lora_s.0.weight", "v.lora_s.2.weight", "out.weight", "out.bias",
    ]
    assert adapted.head_param_names(1) == ["q.lora_H.1.weight", "v.lora_H.1.weight"]
    with torch.no_grad():
        adapted.layers["q"].lora_s[1].weight.fill_(3.0)  # type: ignore[index]
    adapted.reset_head_scales()
    assert float(adapted.layers["q"].lora_s[1].weight.detach()) == 1.0  # type: ignore[index]


def test_rank_not_divisible_by_heads_is_refused() -> None:
    with pytest.raises(UsageError, match="not a positive multiple of heads = 4"):
        AdaptedModel(Toy(), ["q"], "ravan", 6, heads=4)
    with pytest.raises(UsageError, match="RAVAN option"):
        AdaptedModel(Toy(), ["q"], "lora-sb", 4, heads=4)


def test_gram_schmidt_bases_are_orthonormal() -> None:
    b, a, used = ravan_bases(12, 16, 8, "gram-schmidt", torch.Generator().manual_seed(3))
    assert used == "gram-schmidt" and b.shape == (12, 8) and a.shape == (8, 16) and b.dtype == torch.float32
    torch.testing.assert_close(b.T @ b, torch.eye(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(a @ a.T, torch.eye(8), atol=1e-6, rtol=0)


def test_normal_bases_are_variance_scaled() -> None:
    b, a, used = ravan_bases(400, 900, 64, "normal", torch.Generator().manual_seed(3))
    assert used == "normal"
    assert abs(float(b.std()) - 400**-0.5) < 0.05 * 400**-0.5
    assert abs(float(a.std()) - 900**-0.5) < 0.05 * 900**-0.5
    assert abs(float((b.T @ b).diagonal().mean()) - 1) < 0.05  # columns and rows of about unit norm


def test_gram_schmidt_that_does_not_fit_falls_back_to_normal_with_a_warning() -> None:
    adapted = AdaptedModel(Toy(d=6), ["q", "v"], "ravan", 8, heads=4)  # 8 > min(6, 6) and > min(8, 6)
    with pytest.warns(UserWarning, match="scaled random normal"):
        fallback = adapted.init_ravan(0, "gram-schmidt")
    assert fallback == ["q", "v"]
    b = adapted.layers["q"].lora_B.weight
    assert torch.count_nonzero(b) == b.numel()
    fits = AdaptedModel(Toy(d=16), ["q"], "ravan", 8, heads=4)
    assert fits.init_ravan(0, "gram-schmidt") == []


def test_init_gives_nonzero_bases_zero_heads_unit_scales_per_layer_and_seed() -> None:
    adapted = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, heads=4)
    with torch.no_grad():
        adapted.layers["q"].lora_H[0].weight.fill_(1.0)  # type: ignore[index]
        adapted.layers["q"].lora_s[0].weight.fill_(2.0)  # type: ignore[index]
    adapted.init_ravan(5)
    q, v = adapted.layers["q"], adapted.layers["v"]
    assert q.lora_H is not None and q.lora_s is not None
    assert torch.count_nonzero(q.lora_H[0].weight) == 0 and float(q.lora_s[0].weight.detach()) == 1.0
    assert torch.count_nonzero(q.lora_B.weight) == q.lora_B.weight.numel()
    assert not torch.equal(q.lora_A.weight, v.lora_A.weight)  # per-layer draws
    other = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, heads=4)
    other.init_ravan(6)
    assert not torch.equal(other.layers["q"].lora_B.weight, q.lora_B.weight)
    again = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, heads=4)
    again.init_ravan(5)
    assert torch.equal(again.layers["q"].lora_B.weight, q.lora_B.weight)


DIGEST = textwrap.dedent("""
    import hashlib, torch
    from torch import nn
    from fedsb.adapters.model import AdaptedModel
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 16)
            self.v = nn.Linear(16, 8)
    torch.manual_seed(123)  # the global RNG must not matter
    adapted = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, heads=4)
    adapted.init_ravan(7, "{init}")
    h = hashlib.sha256()
    for n in sorted(adapted.layers):
        for t in (adapted.layers[n].lora_A.weight, adapted.layers[n].lora_B.weight):
            h.update(t.detach().numpy().tobytes())
    print(h.hexdigest())
""")


@pytest.mark.parametrize("init", ["gram-schmidt", "normal"])
def test_bases_are_bit_identical_in_another_process(init: str) -> None:
    """Every party must hold the same bases: a fresh interpreter with another global seed draws the same bits."""
    out = subprocess.run([sys.executable, "-c", DIGEST.format(init=init)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    torch.manual_seed(0)

    class Toy2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(16, 16)
            self.v = nn.Linear(16, 8)

    adapted = AdaptedModel(Toy2(), ["q", "v"], "ravan", 8, heads=4)
    adapted.init_ravan(7, init)  # type: ignore[arg-type]
    h = hashlib.sha256()
    for n in sorted(adapted.layers):
        for t in (adapted.layers[n].lora_A.weight, adapted.layers[n].lora_B.weight):
            h.update(t.detach().numpy().tobytes())
    assert out.stdout.strip() == h.hexdigest()
