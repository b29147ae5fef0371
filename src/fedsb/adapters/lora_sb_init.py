"""LoRA-SB initialisation ("update approximation", DESIGN.md section 1).

1. Sum the gradients of the loss w.r.t. the frozen target weights over a few examples (float32; only the
   target weights are hooked, so nothing else records gradients).
2. Turn the sum into Adam's first step: ``dW = -eta_init * sign(sum)``.
3. Truncated SVD ``dW ~= U_r diag(S_r) V_r^T`` (``torch.svd_lowrank`` with oversampling, its random
   sketch drawn under a forked RNG so the caller's global seed is untouched; or an exact SVD).
4. ``B = U_r``, ``A = V_r^T``, ``R0 = diag(S_r) / s``: the model starts at ``W0 + best rank-r approx of dW``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.layer import base_weight
from fedsb.adapters.model import AdaptedModel
from fedsb.devices import seeded_rng

SvdMethod = Literal["lowrank", "exact"]
LossFn = Callable[[torch.nn.Module, Any], Tensor]


def gradient_sums(
    adapted: AdaptedModel, batches: Iterable[Any], loss_fn: LossFn, batch_size_fn: Callable[[Any], int]
) -> tuple[dict[str, Tensor], int]:
    """Sum over examples of dL/dW0 for every adapted layer, float32, ``nn.Linear`` layout (d_out x d_in).

    ``loss_fn`` returns the mean loss of a batch, so each batch's gradient is scaled by its size. The
    adapters are disabled (the gradient is taken at W0) and only the target base weights require grad.
    Returns the sums (on the device of the weights) and the number of examples used.
    """
    model = adapted.model
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {n: layer.base.weight for n, layer in adapted.layers.items()}
    # A GPT-2 Conv1D stores its weight as d_in x d_out: its gradient is transposed by layer type, never by
    # comparing shapes (a square Conv1D, such as GPT-2's attn.c_proj, has the same shape either way).
    transposed = {n: isinstance(layer.base, Conv1D) for n, layer in adapted.layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    sums = {n: torch.zeros(layer.d_out, layer.d_in, dtype=torch.float32, device=weights[n].device)
            for n, layer in adapted.layers.items()}
    adapted.set_adapters_enabled(False)
    was_training = model.training
    model.eval()  # no dropout: the estimate should be deterministic
    count = 0
    try:
        for batch in batches:
            b = batch_size_fn(batch)
            loss = loss_fn(model, batch) * b
            loss.backward()
            for n, w in weights.items():
                assert w.grad is not None  # every adapted layer is on the loss's path, so its weight has a gradient
                g = w.grad.T if transposed[n] else w.grad
                sums[n].add_(g.to(torch.float32))
                w.grad = None
            count += b
    finally:
        adapted.set_adapters_enabled(True)
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None
        model.train(was_training)
    return sums, count


def update_direction(grad_sum: Tensor, eta_init: float) -> Tensor:
    """Adam's first step from a gradient sum: ``-eta_init * sign(grad_sum)``."""
    return -eta_init * torch.sign(grad_sum.to(torch.float32))


def truncated_svd(
    m: Tensor, rank: int, method: SvdMethod = "lowrank", oversample: int = 8, niter: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` singular triplets ``(U_r, S_r, V_r)`` of ``m`` in float32."""
    m = m.to(torch.float32)
    k = min(m.shape)
    if method == "exact" or rank + oversample >= k:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].T
    with seeded_rng(seed, m.device):  # the sketch is drawn on m's device; no global generator is reseeded
        u, s, v = torch.svd_lowrank(m, q=rank + oversample, niter=niter)
    return u[:, :rank], s[:rank], v[:, :rank]


def lora_sb_factors(
    delta: Tensor, rank: int, scaling: float, method: SvdMethod = "lowrank", oversample: int = 8, niter: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, A, R0)`` with ``s * B R0 A`` the best rank-r approximation of ``delta`` (as far as the SVD is exact)."""
    u, s, v = truncated_svd(delta, rank, method, oversample, niter, seed)
    return u.contiguous(), v.T.contiguous(), torch.diag(s) / scaling


def lora_sb_init_from_directions(
    adapted: AdaptedModel,
    directions: dict[str, Tensor],
    method: SvdMethod = "lowrank",
    oversample: int = 8,
    niter: int = 2,
    seed: int = 0,
) -> None:
    """Set B, A, R0 of every layer from its update direction ``dW`` (d_out x d_in; the SVD runs on the layer's device)."""
    with torch.no_grad():
        for i, (name, layer) in enumerate(adapted.layers.items()):
            direction = directions[name].to(layer.lora_B.weight.device)
            b, a, r0 = lora_sb_factors(direction, layer.rank, layer.scaling, method, oversample, niter, seed + i)
            layer.lora_B.weight.copy_(b)
            layer.lora_A.weight.copy_(a)
            assert layer.lora_R is not None
            layer.lora_R.weight.copy_(r0)


def base_weights(adapted: AdaptedModel) -> dict[str, Tensor]:
    """Frozen base weights of adapted layers in ``nn.Linear`` layout (float32 copies)."""
    return {n: base_weight(layer.base).detach().to(torch.float32).clone() for n, layer in adapted.layers.items()}
