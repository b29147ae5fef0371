"""Opacus per-sample gradients of RAVAN's H_i and scalar s_i equal per-example backward passes."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedsb.adapters.layer import HeadScale
from fedsb.adapters.model import AdaptedModel
from fedsb.privacy.dp_sgd import grad_sampler
from fedsb.privacy.grad_samplers import head_scale_grad_sample


class Toy(nn.Module):
    """Two adapted layers on a (batch, tokens, features) input, so the sampler sums over the token axis."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.v = nn.Linear(16, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.v(torch.tanh(self.q(x)))).mean(dim=1))


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def test_head_scale_sampler_is_registered() -> None:
    assert GradSampleModule.GRAD_SAMPLERS[HeadScale] is head_scale_grad_sample


@pytest.mark.parametrize("active", [[0, 1, 2, 3], [1, 3]])
def test_per_sample_grads_of_h_and_s_match_naive_loop(active: list[int]) -> None:
    torch.manual_seed(0)
    adapted = AdaptedModel(Toy(), ["q", "v"], "ravan", 8, head=["out"], heads=4)
    adapted.init_ravan(0)
    with torch.no_grad():  # non-zero H and s != 1, so neither gradient is trivially related to the other
        for layer in adapted.layers.values():
            for h, s in zip(layer.lora_H, layer.lora_s, strict=True):  # type: ignore[arg-type]
                h.weight.normal_(0, 0.5)
                s.weight.uniform_(0.5, 1.5)
    adapted.set_active_heads(active)
    model = adapted.model
    names = adapted.trainable_state_names()
    assert sum(".lora_s." in n for n in names) == 2 * len(active)
    params = {n: model.get_parameter(n) for n in names}
    x, y = torch.randn(5, 7, 16), torch.tensor([0, 2, 1, 1, 0])
    with grad_sampler(model) as gsm:
        loss_of(gsm, x, y).backward()
        samples = {n: p.grad_sample.detach().clone() for n, p in params.items()}  # type: ignore[attr-defined]
        for p in params.values():
            p.grad = None
            p.grad_sample = None  # type: ignore[attr-defined]
    for i in range(5):
        grads = torch.autograd.grad(loss_of(model, x[i : i + 1], y[i : i + 1]), list(params.values()))
        for (n, p), g_i in zip(params.items(), grads, strict=True):
            assert samples[n].shape == (5, *p.shape)
            torch.testing.assert_close(samples[n][i], g_i, atol=1e-6, rtol=1e-5, msg=f"{n} example {i}")
    inactive = [n for n, p in model.named_parameters() if ".lora_H." in n and not p.requires_grad]
    assert len(inactive) == 2 * (4 - len(active))
