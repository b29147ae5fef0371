"""Sample-level DP on a causal LM: each example's per-sample gradient depends on that example alone.

Per-example clipping bounds sensitivity only if example i's gradient does not change with its batch-mates.
A loss averaged over all response tokens of the batch scales example i's gradient by its share of the
batch's tokens (and Opacus' ``loss_reduction="mean"`` by the batch size), so the same example's clipped
norm moves with whoever else the Poisson draw put next to it.
"""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers import DPOptimizer

import fedsb.privacy.dp_sgd as dp_sgd
from fedsb.adapters.model import AdaptedModel
from fedsb.core.training import Schedule
from fedsb.models.load import load_model
from fedsb.objectives.causal_lm import CausalLMObjective
from fedsb.privacy.init_dp import private_gradient_sums
from fedsb.tasks.base import Example
from fedsb.tasks.prompts import alpaca_prompt


def ex(q: str, a: str) -> Example:
    return Example(text=alpaca_prompt(q), response=a, answer=a, meta={"answer_type": "exact"})


#: Prompts and responses of different lengths, so batch-mates change padding, token counts and ``keep``.
EXAMPLES = [
    ex("What is two plus two?", "four"),
    ex("Name a colour of the sky on a clear day, please, in one word.", "blue, mostly, and sometimes grey or white"),
    ex("Say yes.", "yes"),
    ex("Write a long answer about nothing in particular that goes on for a while.", "this is a rather long reply " * 3),
]


@pytest.fixture(scope="module")
def adapted_llama():
    lm = load_model("tiny-llama", "causal-lm", seed=0)
    # float64: the check is about what a gradient depends on, not about float32 round-off under padding.
    lm.model.double()
    adapted = AdaptedModel(lm.model, lm.targets, "lora", 4)
    adapted.init_lora(0)
    with torch.no_grad():  # B = 0 would zero every gradient of A: make both informative
        g = torch.Generator().manual_seed(1)
        for p in adapted.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return adapted, CausalLMObjective(lm.tokenizer, 64)


def grad_samples_in_dp_training(adapted: AdaptedModel, objective: CausalLMObjective, batches: list[list[int]],
                                monkeypatch) -> list[list[torch.Tensor]]:
    """Run ``dp_local_train`` with the Poisson draws replaced by ``batches`` and record, at every step, the
    per-sample gradients Opacus hands to the clipping (lr 0, so the model stays put between steps)."""
    draws = iter(batches)
    monkeypatch.setattr(dp_sgd, "poisson_batch", lambda n, q, generator: next(draws))
    seen: list[list[torch.Tensor]] = []

    class Recording(DPOptimizer):
        def clip_and_accumulate(self) -> None:
            seen.append([g.detach().clone() for g in self.grad_samples])
            super().clip_and_accumulate()

    monkeypatch.setattr(dp_sgd, "DPOptimizer", Recording)
    params = list(adapted.trainable_parameters())
    opt = torch.optim.SGD(params, lr=0.0)
    for grp in opt.param_groups:
        grp["base_lr"] = 0.0
    dp_sgd.dp_local_train(adapted, objective, EXAMPLES, len(batches), opt, Schedule(len(batches), 0, "constant"), 0,
                          0.0, 1e6, 2, torch.Generator().manual_seed(0))
    return seen


def test_causal_lm_per_sample_gradient_ignores_batch_mates(adapted_llama, monkeypatch) -> None:
    """Example 0's per-sample gradient is the same alone, next to one short example, and at the end of a batch
    of three longer ones; and it is the gradient of its own mean response-token loss."""
    adapted, objective = adapted_llama
    batches = [[0], [0, 2], [1, 3, 0]]
    seen = grad_samples_in_dp_training(adapted, objective, batches, monkeypatch)
    assert len(seen) == len(batches)
    mine = [[g[b.index(0)] for g in step] for step, b in zip(seen, batches, strict=True)]
    # reference: a plain backward pass of example 0's own loss (mean over its response tokens)
    adapted.model.train()
    params = list(adapted.trainable_parameters())
    ref = torch.autograd.grad(objective.loss(adapted.model, objective.collate([EXAMPLES[0]])), params)
    for step, grads in enumerate(mine):
        for p_idx, (g, r) in enumerate(zip(grads, ref, strict=True)):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=0, msg=f"batch {batches[step]}, parameter {p_idx}")
    assert max(float(r.abs().max()) for r in ref) > 1e-3  # the gradient is not trivially zero


def test_private_init_sums_use_per_example_losses(adapted_llama) -> None:
    """The private LoRA-SB init clips each example's own gradient: with a clip norm far above every norm and no
    noise, its sum equals the sum of single-example gradients, whatever the batch size setting."""
    adapted, objective = adapted_llama
    single = [private_gradient_sums(adapted, objective, [e], 1, 1e9, 0.0, torch.Generator()) for e in EXAMPLES]
    both = private_gradient_sums(adapted, objective, EXAMPLES, 4, 1e9, 0.0, torch.Generator())
    for n, t in both.items():
        torch.testing.assert_close(t, sum(s[n] for s in single), atol=1e-6, rtol=1e-6)
