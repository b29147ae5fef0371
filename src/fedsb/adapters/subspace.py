"""How close two LoRA-SB inits are: principal angles between their B (column) and A (row) subspaces."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fedsb.adapters.model import AdaptedModel


def principal_cosines(x: Tensor, y: Tensor) -> Tensor:
    """Cosines of the principal angles between the column spaces of ``x`` and ``y`` (d x r each), descending.

    Both bases are re-orthonormalised first (QR), so any basis of the subspace gives the same answer, and
    a sign flip of a singular vector (the SVD's inherent ambiguity) changes nothing.
    """
    qx, _ = torch.linalg.qr(x.to(torch.float64))
    qy, _ = torch.linalg.qr(y.to(torch.float64))
    return torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0)


def mean_cos2(x: Tensor, y: Tensor) -> float:
    """Mean squared cosine of the principal angles: 1 = same subspace, about r/d for unrelated random ones."""
    c = principal_cosines(x, y)
    return float((c**2).mean())


def init_agreement(reference: dict[str, tuple[Tensor, Tensor]], other: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean cos^2 of B subspaces (columns of B) and A subspaces (rows of A), averaged over layers.

    Both arguments map a layer name to its ``(B, A)``: B is ``d_out x r``, A is ``r x d_in``.
    """
    b = [mean_cos2(reference[n][0], other[n][0]) for n in reference]
    a = [mean_cos2(reference[n][1].T, other[n][1].T) for n in reference]
    return {"b_cos2": sum(b) / len(b), "a_cos2": sum(a) / len(a)}


def adapter_factors(adapted: AdaptedModel) -> dict[str, tuple[Tensor, Tensor]]:
    """``(B, A)`` CPU copies of every adapted layer (comparable across models on any device)."""
    return {n: (layer.lora_B.weight.detach().to("cpu", copy=True), layer.lora_A.weight.detach().to("cpu", copy=True))
            for n, layer in adapted.layers.items()}
