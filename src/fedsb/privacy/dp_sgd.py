"""Sample-level DP-SGD for one client's local training, with Opacus.

Each step draws a Poisson batch (every local example joins independently with probability
``q = batch_size / N_client``), Opacus' :class:`~opacus.GradSampleModule` computes per-example gradients
of the trainable tensors only (the adapters are plain ``nn.Linear`` so its built-in samplers apply, RAVAN's
scalar ``s_i`` has its own in :mod:`fedsb.privacy.grad_samplers`; frozen base layers get no hooks), and :class:`~opacus.optimizers.DPOptimizer` clips each example's gradient to
``max_grad_norm``, adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` and divides by the
expected batch size before the wrapped AdamW step. The loss is the objective's ``dp_loss`` (mean over
examples of per-example losses) with ``loss_reduction="mean"`` throughout, so each per-sample gradient is
that example's own gradient: a causal LM's batch-wide token mean would make it depend on the batch-mates.

All virtual clients share one base model, so the wrapper is attached for one client's round and removed
afterwards (:func:`grad_sampler`), leaving no hooks or Opacus attributes behind.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedsb.adapters.model import AdaptedModel
from fedsb.core.training import Schedule
from fedsb.objectives.base import Objective
from fedsb.privacy import grad_samplers  # noqa: F401 (registers the samplers of fedsb's own adapter modules)
from fedsb.privacy.noise import generator_on
from fedsb.tasks.base import Example

#: Attributes DPOptimizer leaves on parameters (GradSampleModule cleans up its own).
DP_OPTIMIZER_ATTRS = ("summed_grad", "grad_sample", "_processed")
#: Attributes GradSampleModule's hooks leave on modules.
MODULE_ATTRS = ("activations", "max_batch_len")


@contextmanager
def grad_sampler(model: nn.Module) -> Iterator[GradSampleModule]:
    """Wrap ``model`` for per-example gradients; on exit remove every hook and per-sample attribute."""
    model.train()  # Opacus records activations only in training mode
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    try:
        with warnings.catch_warnings():
            # The first adapter's input does not require grad; the hook still sees the parameter gradients.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            yield gsm
    finally:
        gsm._close()
        for p in model.parameters():
            for attr in DP_OPTIMIZER_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)
        for m in model.modules():  # stored activations would otherwise pin the last batch in memory
            for attr in MODULE_ATTRS:
                if hasattr(m, attr):
                    delattr(m, attr)


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> list[int]:
    """Indices of a Poisson sample: each of ``n`` examples is kept independently with ``sample_rate``."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten().tolist()


def dp_local_train(
    adapted: AdaptedModel,
    objective: Objective,
    examples: list[Example],
    steps: int,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    step_offset: int,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    generator: torch.Generator,
    on_step: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """``steps`` DP-SGD steps on ``examples``; ``on_step(sample_rate)`` is called after each noisy step
    (the caller's accountant records it). Returns the mean training loss."""
    n = len(examples)
    q = min(1.0, expected_batch_size / n)
    params = [p for p in adapted.trainable_parameters()]
    total, counted = 0.0, 0
    with grad_sampler(adapted.model) as gsm:
        dp_opt = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean",
            generator=generator_on(generator, params[0].device),  # noise on the parameters' device, batches on CPU
        )
        for s in range(steps):
            f = schedule.factor(step_offset + s)
            for g in dp_opt.param_groups:
                g["lr"] = g["base_lr"] * f
            idx = poisson_batch(n, q, generator)
            dp_opt.zero_grad(set_to_none=True)
            if idx:
                # Per-example losses averaged over the batch; Opacus' "mean" reduction multiplies grad samples
                # by the batch size, so each is the gradient of that example's own loss (bounded sensitivity).
                loss = objective.dp_loss(gsm, objective.collate([examples[i] for i in idx]))
                loss.backward()
                total += loss.item()
                counted += 1
            else:
                # An empty Poisson batch still takes a (pure-noise) step: skipping it would change the
                # mechanism the accountant assumes.
                for p in params:
                    # ignore: Opacus' per-sample gradient attribute, which torch's Parameter type does not declare
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
            dp_opt.step()
            if on_step is not None:
                on_step(q)
        dp_opt.zero_grad(set_to_none=True)
    return {"train_loss": total / max(counted, 1)}
