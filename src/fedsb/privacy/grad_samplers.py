"""Opacus per-sample gradients for fedsb's own adapter modules (imported by :mod:`fedsb.privacy.dp_sgd`).

RAVAN's head scale ``s_i`` (:class:`fedsb.adapters.layer.HeadScale`, ``y = s_i x``) has no built-in Opacus
sampler. Its per-example gradient is ``sum over every non-batch axis of (dL/dy * x)``, computed here from the
activations and backprops Opacus records, so ``GradSampleModule(strict=True)`` accepts it without the slower
functorch fallback. ``fedsb.adapters`` stays free of Opacus: the registration lives here.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import Tensor, nn

from fedsb.adapters.layer import HeadScale


@register_grad_sampler(HeadScale)
def head_scale_grad_sample(layer: HeadScale, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-example gradient of ``s`` in ``y = s x``: shape (batch, 1)."""
    if not layer.weight.requires_grad:
        return {}
    x = activations[0].to(backprops.dtype)
    return {layer.weight: torch.einsum("n...,n...->n", backprops, x).unsqueeze(1)}
