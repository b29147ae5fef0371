"""Principal-angle agreement between subspaces."""

from __future__ import annotations

import torch

from fedsb.adapters.subspace import init_agreement, mean_cos2, principal_cosines


def test_same_subspace_any_basis_scores_one() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    mix = torch.randn(4, 4, generator=g)  # another basis of the same span, signs flipped too
    assert abs(mean_cos2(x, -x @ mix) - 1.0) < 1e-9


def test_orthogonal_subspaces_score_zero_and_partial_overlap_in_between() -> None:
    e = torch.eye(10)
    assert mean_cos2(e[:, :3], e[:, 3:6]) < 1e-12
    assert abs(mean_cos2(e[:, :2], e[:, 1:3]) - 0.5) < 1e-9
    c = principal_cosines(e[:, :2], e[:, 1:3])
    assert torch.allclose(c, torch.tensor([1.0, 0.0], dtype=c.dtype))


def test_init_agreement_reads_b_columns_and_a_rows() -> None:
    e = torch.eye(8)
    ref = {"l": (e[:, :2], e[:2, :])}
    other = {"l": (e[:, :2], e[2:4, :])}  # same B, orthogonal A rows
    agr = init_agreement(ref, other)
    assert abs(agr["b_cos2"] - 1) < 1e-9 and agr["a_cos2"] < 1e-12
