"""LoRA-SB initialisation (DESIGN.md section 1): gradient sums, sign step, SVD factors."""

from __future__ import annotations

import torch

from fedsb.adapters.lora_sb_init import gradient_sums, lora_sb_factors, truncated_svd, update_direction
from fedsb.core.federation import initialise_adapters
from tests.helpers import tiny_federation


def test_factors_are_orthonormal_and_give_the_best_rank_r_approximation() -> None:
    g = torch.Generator().manual_seed(0)
    delta = update_direction(torch.randn(40, 30, generator=g), eta_init=1e-3)
    r, s = 5, 0.5
    b, a, r0 = lora_sb_factors(delta, r, s, method="exact")
    torch.testing.assert_close(b.T @ b, torch.eye(r), atol=1e-5, rtol=0)
    torch.testing.assert_close(a @ a.T, torch.eye(r), atol=1e-5, rtol=0)
    u, sv, vh = torch.linalg.svd(delta.double())
    best = (u[:, :r] * sv[:r]) @ vh[:r]
    torch.testing.assert_close((s * b @ r0 @ a).double(), best, atol=1e-7, rtol=1e-4)  # float32 factors
    # Eckart-Young: no other rank-r matrix is closer; the residual equals the tail singular values.
    err = torch.linalg.norm(delta.double() - s * (b @ r0 @ a).double())
    torch.testing.assert_close(err, sv[r:].pow(2).sum().sqrt(), rtol=1e-5, atol=1e-9)


def test_update_direction_is_minus_eta_sign() -> None:
    grad = torch.tensor([[2.0, -3.0], [0.0, 1e-9]])
    assert torch.equal(update_direction(grad, 0.1), torch.tensor([[-0.1, 0.1], [0.0, -0.1]]))


def test_lowrank_svd_matches_exact_on_a_low_rank_matrix_and_leaves_global_rng_alone() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(60, 4, generator=g) @ torch.randn(4, 50, generator=g)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    u, s, v = truncated_svd(m, 4, "lowrank", oversample=4, niter=2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, m, atol=1e-4, rtol=1e-4)
    u2, s2, v2 = truncated_svd(m, 4, "lowrank", oversample=4, niter=2, seed=7)
    assert torch.equal(u, u2) and torch.equal(s, s2)


def test_gradient_sums_equal_autograd_on_the_base_weight_and_record_nothing_else() -> None:
    fed = tiny_federation("tiny-bert")
    batch = fed.objective.collate(fed.shards[0][:4])
    sums, n = gradient_sums(fed.adapted, [batch], fed.objective.loss, fed.objective.batch_size)
    assert n == 4
    name, layer = next(iter(fed.adapted.layers.items()))
    w = layer.base.weight
    w.requires_grad_(True)
    fed.adapted.set_adapters_enabled(False)
    fed.adapted.model.eval()
    loss = fed.objective.loss(fed.adapted.model, batch) * 4
    (g,) = torch.autograd.grad(loss, w)
    w.requires_grad_(False)
    fed.adapted.set_adapters_enabled(True)
    torch.testing.assert_close(sums[name], g, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in fed.adapted.model.parameters())
    assert {n for n, p in fed.adapted.model.named_parameters() if p.requires_grad} == set(fed.adapted.trainable_state_names())


def test_federated_init_sets_b_a_r0_from_the_summed_client_gradients() -> None:
    # the dense upload; B, A, R0 exactly as the SVD gives them (a float32 one-time broadcast)
    fed = tiny_federation("tiny-bert", init={"svd": "exact", "source": "federated", "broadcast_bits": 32})
    up = initialise_adapters(fed)
    d = sum(layer.d_in * layer.d_out for layer in fed.adapted.layers.values())
    assert up["upload_params"] == d and up["upload_bytes"] == 4 * d
    for layer in fed.adapted.layers.values():
        b, a = layer.lora_B.weight, layer.lora_A.weight
        torch.testing.assert_close(b.T @ b, torch.eye(layer.rank), atol=1e-5, rtol=0)
        torch.testing.assert_close(a @ a.T, torch.eye(layer.rank), atol=1e-5, rtol=0)
        r0 = layer.lora_R.weight
        assert torch.count_nonzero(r0 - torch.diag(torch.diagonal(r0))) == 0  # R0 = diag(S_r) / s
        assert bool((torch.diagonal(r0)[:-1] >= torch.diagonal(r0)[1:]).all())


def test_gradient_sums_of_gpt2_conv1d_are_in_linear_layout_even_when_square() -> None:
    """GPT-2's Conv1D stores W as d_in x d_out; attn.c_proj is square, so only its type says it is transposed."""
    from transformers.pytorch_utils import Conv1D

    fed = tiny_federation("tiny-gpt2")
    layers = fed.adapted.layers
    square = [n for n, layer in layers.items() if isinstance(layer.base, Conv1D) and layer.d_in == layer.d_out]
    assert any(n.endswith("attn.c_proj") for n in square)
    assert any(n.endswith("attn.c_attn") and layers[n].d_in != layers[n].d_out for n in layers)
    batch = fed.objective.collate(fed.shards[0][:4])
    sums, _ = gradient_sums(fed.adapted, [batch], fed.objective.loss, fed.objective.batch_size)
    weights = [layer.base.weight for layer in layers.values()]
    for w in weights:
        w.requires_grad_(True)
    fed.adapted.set_adapters_enabled(False)
    fed.adapted.model.eval()
    grads = torch.autograd.grad(fed.objective.loss(fed.adapted.model, batch) * 4, weights)
    for w in weights:
        w.requires_grad_(False)
    fed.adapted.set_adapters_enabled(True)
    for (name, layer), g in zip(layers.items(), grads, strict=True):
        linear_layout = g.T  # dL/dW with W = weight.T (d_out x d_in)
        assert sums[name].shape == (layer.d_out, layer.d_in)
        torch.testing.assert_close(sums[name], linear_layout, rtol=1e-5, atol=1e-7, msg=name)
        if name in square:
            assert not torch.allclose(sums[name], g, rtol=1e-3, atol=1e-6), "a non-symmetric gradient is told apart from its transpose"
