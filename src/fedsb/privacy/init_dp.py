"""The LoRA-SB initialisation under differential privacy.

A client's init message is a sum of per-example gradients of the frozen target weights (DESIGN.md
section 2). Under sample-level DP each client:

1. draws a Poisson sample of its local data (each example with probability ``q = init.samples / N``);
2. computes every sampled example's gradient separately and scales it to L2 norm at most ``C``
   (``dp.max_grad_norm``, the norm taken jointly over all target layers);
3. adds Gaussian noise ``N(0, (sigma C)^2)`` to every coordinate of the sum before it leaves the client.

That is one step of the subsampled Gaussian mechanism ``(sigma, q)``; it is charged to the client's own
accountant, the same one that then records its DP-SGD steps, so the reported epsilon covers init and
training together (composition). Everything the server does next (``-eta * sign``, SVD) is post-processing.

``sign(sum of clipped grads + noise)`` is invariant to ``C`` when every example is clipped, and the noise
norm grows with the number of target weights while the signal grows with the number of examples, so at
small epsilon the private B, A are close to a random orthonormal pair. A ``public`` init source costs no
privacy and keeps a data-informed subspace when public data that resembles the task exists.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsb.adapters.lora_sb_init import gradient_sums
from fedsb.adapters.model import AdaptedModel
from fedsb.objectives.base import Objective
from fedsb.privacy.noise import generator_on
from fedsb.tasks.base import Example


def init_sample_rate(samples: int, n: int) -> float:
    return min(1.0, samples / max(n, 1))


def poisson_examples(examples: list[Example], sample_rate: float, generator: torch.Generator) -> list[Example]:
    keep = torch.rand(len(examples), generator=generator) < sample_rate
    return [e for e, k in zip(examples, keep.tolist(), strict=True) if k]


def private_gradient_sums(
    adapted: AdaptedModel,
    objective: Objective,
    examples: list[Example],
    batch_size: int,
    max_grad_norm: float | None,
    noise_multiplier: float,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Sum over ``examples`` of per-example target-weight gradients, each clipped to ``max_grad_norm``
    (jointly over layers; ``None`` = no clipping), plus ``N(0, (noise_multiplier * max_grad_norm)^2)``.

    Without clipping no per-example pass is needed: the plain batched :func:`gradient_sums` is used, so
    ``max_grad_norm=None, noise_multiplier=0`` reproduces the non-private init bit for bit.
    """
    if noise_multiplier > 0 and max_grad_norm is None:
        raise ValueError("noise needs a clipping norm: the sensitivity of an unclipped sum is unbounded")
    shapes = {n: (layer.d_out, layer.d_in) for n, layer in adapted.layers.items()}
    device = next(iter(adapted.layers.values())).base.weight.device  # the sums live where the gradients do
    if max_grad_norm is None:
        batches = [objective.collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
        sums, _ = gradient_sums(adapted, batches, objective.loss, objective.batch_size) if batches else (
            {n: torch.zeros(s, device=device) for n, s in shapes.items()}, 0)
    else:
        sums = {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in shapes.items()}
        for ex in examples:
            # One example per pass, its per-example loss (mean over its own response tokens for a causal LM).
            g, _ = gradient_sums(adapted, [objective.collate([ex])], objective.dp_loss, objective.batch_size)
            norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in g.values()))
            factor = min(1.0, max_grad_norm / (norm + 1e-12))
            for n, t in g.items():
                sums[n].add_(t, alpha=factor)
    if noise_multiplier > 0:
        assert max_grad_norm is not None  # refused above: noise needs a clipping norm
        std = noise_multiplier * float(max_grad_norm)
        for t in sums.values():
            gen = generator_on(generator, t.device)  # the noise is drawn where the sum lives
            t.add_(torch.normal(0.0, std, size=t.shape, generator=gen, device=t.device))
    return sums


def clip_total(sums: dict[str, Tensor], max_norm: float) -> dict[str, Tensor]:
    """Scale a whole message to joint L2 norm at most ``max_norm`` (client-level clipping)."""
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in sums.values()))
    factor = min(1.0, max_norm / (norm + 1e-12))
    return {n: t * factor for n, t in sums.items()}
