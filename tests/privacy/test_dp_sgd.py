"""Opacus per-example gradients on fedsb adapters, hook hygiene, and what a DP step may change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsb.core.federation import initialise_adapters
from fedsb.core.training import Schedule, build_optimizer
from fedsb.privacy.dp_sgd import dp_local_train, grad_sampler, poisson_batch
from tests.helpers import tiny_federation


def no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["fed-sb", "ffa-lora", "fedit", "fedsvd", "ravan", "rolora", "fedsa-lora"])
def test_per_sample_grads_match_naive_loop(method: str) -> None:
    """Opacus' grad samples of R (Fed-SB), B (FFA-LoRA), A and B (FedIT, FedSA-LoRA), H_i and s_i (RAVAN), RoLoRA's
    A round and the head equal per-example backward passes."""
    fed = tiny_federation(method=method)
    initialise_adapters(fed)
    fed.method.begin_round(fed.adapted, 1)  # RoLoRA: an A round (the B round is FFA-LoRA's case)
    with torch.no_grad():  # make every adapter factor non-zero so every gradient is informative
        g = torch.Generator().manual_seed(1)
        for p in fed.adapted.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model = fed.adapted.model
    no_dropout(model)
    batch = fed.objective.collate(fed.shards[0][:5])
    names = fed.adapted.trainable_state_names()
    params = {n: model.get_parameter(n) for n in names}
    with grad_sampler(model) as gsm:
        fed.objective.loss(gsm, batch).backward()
        samples = {n: p.grad_sample.detach().clone() for n, p in params.items()}
        for p in params.values():
            p.grad = None
            p.grad_sample = None
    model.train()
    for i in range(5):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(fed.objective.loss(model, one), list(params.values()))
        for (n, _), g_i in zip(params.items(), grads, strict=True):
            torch.testing.assert_close(samples[n][i], g_i, atol=1e-5, rtol=1e-5, msg=f"{method} {n} example {i}")
    assert any(".lora_R." in n or ".lora_B." in n or ".lora_H." in n for n in names) or \
        (method == "rolora" and all(".lora_B." not in n for n in names) and any(".lora_A." in n for n in names))


def test_grad_sampler_leaves_no_hooks_or_attributes() -> None:
    fed = tiny_federation()
    initialise_adapters(fed)
    model = fed.adapted.model
    before = hook_count(model)
    for client in range(2):  # wrap / unwrap per client on the one shared model
        opt = build_optimizer(fed.adapted, 1e-2, 1e-3, 0.0)
        dp_local_train(fed.adapted, fed.objective, fed.shards[client], 2, opt, Schedule(4, 0), 0, 1.0, 1.0, 4,
                       torch.Generator().manual_seed(client))
        assert hook_count(model) == before
        leftovers = [n for n, p in model.named_parameters()
                     if any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample"))]
        assert leftovers == []
        assert not any(hasattr(m, "activations") or hasattr(m, "autograd_grad_sample_hooks") for m in model.modules())


@pytest.mark.parametrize("method", ["fed-sb", "ffa-lora", "fedex-lora"])
def test_dp_step_changes_only_trainable_tensors(method: str) -> None:
    fed = tiny_federation(method=method)
    initialise_adapters(fed)
    model = fed.adapted.model
    trainable = set(fed.adapted.trainable_state_names())
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(fed.adapted, 1e-2, 1e-2, 0.0)
    dp_local_train(fed.adapted, fed.objective, fed.shards[0], 2, opt, Schedule(2, 0, "constant"), 0, 1.0, 0.5, 4,
                   torch.Generator().manual_seed(0))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_empty_poisson_batch_still_takes_a_noisy_step() -> None:
    fed = tiny_federation()
    initialise_adapters(fed)
    r = next(n for n in fed.adapted.trainable_state_names() if ".lora_R." in n)
    before = fed.adapted.get_state([r])[r]
    opt = torch.optim.SGD([p for p in fed.adapted.trainable_parameters()], lr=1.0)
    for g in opt.param_groups:
        g["base_lr"] = 1.0
    # expected batch 1e-9 of the data: every Poisson batch is empty, yet noise is added every step
    dp_local_train(fed.adapted, fed.objective, fed.shards[0][:10], 1, opt, Schedule(1, 0, "constant"), 0, 1.0, 1.0, 1,
                   torch.Generator().manual_seed(0))
    assert poisson_batch(10, 1e-9, torch.Generator().manual_seed(0)) == []
    assert not torch.equal(before, fed.adapted.get_state([r])[r])
