"""AdapterLayer: shapes, trainable sets, the gradient formula of R, Conv1D, float32 adapters in a bf16 base."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.layer import AdapterLayer
from fedsb.adapters.model import AdaptedModel
from fedsb.errors import FedsbError


def make(mode: str, base: nn.Module | None = None, rank: int = 3, alpha: float = 6.0) -> AdapterLayer:
    torch.manual_seed(0)
    layer = AdapterLayer(base or nn.Linear(7, 5), mode, rank, alpha)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in (layer.lora_A.weight, layer.lora_B.weight) + ((layer.lora_R.weight,) if layer.lora_R is not None else ()):
            p.normal_()
    return layer


@pytest.mark.parametrize(
    ("mode", "trainable"),
    [("lora-sb", {"lora_R.weight"}), ("lora", {"lora_A.weight", "lora_B.weight"}), ("ffa", {"lora_B.weight"})],
)
def test_only_adapter_weights_of_the_mode_train(mode: str, trainable: set[str]) -> None:
    layer = make(mode)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == trainable


def test_forward_equals_base_plus_scaled_product() -> None:
    layer = make("lora-sb")
    x = torch.randn(4, 7)
    w = layer.base.weight + layer.scaling * layer.lora_B.weight @ layer.lora_R.weight @ layer.lora_A.weight
    torch.testing.assert_close(layer(x), x @ w.T + layer.base.bias, rtol=1e-5, atol=1e-5)


def test_gradient_of_r_is_s_bt_g_at() -> None:
    """g_R = s * B^T g A^T, with g = dL/dW the full fine-tuning gradient."""
    layer = make("lora-sb", alpha=6.0)  # s = 2
    base = layer.base
    base.weight.requires_grad_(True)
    x, target = torch.randn(6, 7), torch.randn(6, 5)
    loss = ((layer(x) - target) ** 2).sum()
    loss.backward()
    g = base.weight.grad  # dL/dW0 equals dL/dW since W = W0 + delta
    b, a = layer.lora_B.weight.detach(), layer.lora_A.weight.detach()
    expected = layer.scaling * b.T @ g @ a.T
    torch.testing.assert_close(layer.lora_R.weight.grad, expected, rtol=1e-4, atol=1e-5)
    assert layer.scaling == 2.0


def test_conv1d_base_is_handled_in_linear_layout() -> None:
    conv = Conv1D(5, 7)  # nf=5 outputs, nx=7 inputs; weight stored 7 x 5
    layer = make("lora", base=conv)
    assert (layer.d_out, layer.d_in) == (5, 7)
    x = torch.randn(2, 3, 7)
    w = conv.weight.T + layer.adapter_product()
    torch.testing.assert_close(layer(x), x @ w.T + conv.bias, rtol=1e-5, atol=1e-5)


def test_adapters_stay_float32_inside_bf16_base() -> None:
    layer = make("lora-sb", base=nn.Linear(7, 5).to(torch.bfloat16))
    out = layer(torch.randn(2, 7, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert layer.lora_R.weight.dtype == torch.float32 and layer.lora_A.weight.dtype == torch.float32


def test_residual_is_added_and_base_untouched() -> None:
    layer = make("lora")
    w0 = layer.base.weight.detach().clone()
    inc = torch.randn(5, 7)
    layer.add_residual(inc)
    layer.add_residual(inc)
    torch.testing.assert_close(layer.delta_weight(), layer.adapter_product() + 2 * inc)
    assert torch.equal(layer.base.weight, w0)


def test_rank_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank"):
        AdapterLayer(nn.Linear(4, 3), "lora-sb", 4, 4.0)


def test_injection_by_suffix_freezes_everything_else() -> None:
    model = nn.Sequential()
    model.add_module("attn", nn.Module())
    model.attn.add_module("q_proj", nn.Linear(8, 8))
    model.attn.add_module("v_proj", nn.Linear(8, 8))
    model.add_module("out", nn.Linear(8, 2))
    adapted = AdaptedModel(model, ["q_proj"], "lora-sb", 2, head=["out"])
    assert list(adapted.layers) == ["attn.q_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"attn.q_proj.lora_R.weight", "out.weight", "out.bias"}
    assert adapted.trainable_state_names() == ["attn.q_proj.lora_R.weight", "out.weight", "out.bias"]


def test_targets_matching_nothing_list_the_available_names() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(FedsbError, match="match no linear layer.*0"):
        AdaptedModel(model, ["q_proj"], "lora", 2)
