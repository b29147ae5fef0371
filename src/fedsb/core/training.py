"""A client's local training: AdamW on the trainable adapter (and head) tensors, warm-up then decay."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedsb.adapters.model import AdaptedModel
from fedsb.objectives.base import Objective
from fedsb.tasks.base import Example


@dataclass
class Schedule:
    """Learning-rate multiplier by global step: linear warm-up, then cosine/linear decay or constant."""

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_stream(examples: list[Example], batch_size: int, generator: torch.Generator) -> Iterator[list[Example]]:
    """Endless shuffled mini-batches (reshuffled every epoch) from a local generator."""
    n = len(examples)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n, batch_size):
            chunk = order[i : i + batch_size]
            if len(chunk) < min(batch_size, n) and i > 0:
                break  # drop a short tail so every step sees a full batch
            yield [examples[j] for j in chunk]


def build_optimizer(adapted: AdaptedModel, lr: float, head_lr: float, weight_decay: float) -> torch.optim.AdamW:
    head = set(id(p) for p in adapted.head_parameters())
    adapter_params = [p for p in adapted.trainable_parameters() if id(p) not in head]
    groups = [{"params": adapter_params, "lr": lr, "base_lr": lr}]
    head_params = list(adapted.head_parameters())
    if head_params:
        groups.append({"params": head_params, "lr": head_lr, "base_lr": head_lr})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def local_train(
    adapted: AdaptedModel,
    objective: Objective,
    batches: Iterator[list[Example]],
    steps: int,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    step_offset: int,
    max_grad_norm: float | None,
) -> dict[str, float]:
    """Run ``steps`` optimizer steps; returns the mean training loss."""
    adapted.train()
    params = list(adapted.trainable_parameters())
    total = 0.0
    for s in range(steps):
        f = schedule.factor(step_offset + s)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        batch = objective.collate(next(batches))
        loss = objective.loss(adapted.model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        total += loss.item()
    return {"train_loss": total / max(steps, 1)}
