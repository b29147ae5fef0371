"""The objective interface: collate examples, compute a mean loss, evaluate a model.

Two losses: ``loss`` is what non-private training minimises (each objective's own batch reduction, kept
as it always was), ``dp_loss`` is what DP-SGD differentiates: the mean over examples of per-example losses,
so that each example's per-sample gradient depends on that example alone and clipping bounds sensitivity.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn

from fedsb.tasks.base import Example


class Objective(ABC):
    @abstractmethod
    def collate(self, examples: list[Example]) -> dict[str, Any]:
        """Tensors for one batch."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Mean loss of a batch (a scalar that requires grad)."""

    @abstractmethod
    def example_losses(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """One loss per example, shape ``(batch,)``; example i's entry depends on example i alone."""

    def dp_loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Mean over the batch of :meth:`example_losses`: the loss DP-SGD differentiates.

        Used with Opacus ``loss_reduction="mean"``, which multiplies per-sample gradients by the batch size,
        so example i's per-sample gradient is the gradient of its own loss, whatever its batch-mates.
        """
        return self.example_losses(model, batch).mean()

    @abstractmethod
    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int, progress: bool = False) -> dict[str, float]:
        """Metrics on held-out examples (at least ``accuracy`` and ``loss`` where defined)."""

    def token_lengths(self, examples: list[Example]) -> list[int]:
        """Each example's length in tokens before any cut to ``max_length`` (empty: not measured)."""
        return []

    def truncation(self, examples: list[Example], max_length: int, sample: int = 2000) -> tuple[float, int] | None:
        """``(share of examples longer than max_length, 95th-percentile length)`` over a fixed random sample of at
        most ``sample`` examples (the check stays cheap on large pools), or None if not measured."""
        if len(examples) > sample:
            examples = random.Random(0).sample(examples, sample)
        lengths = sorted(self.token_lengths(examples))
        if not lengths:
            return None
        over = sum(1 for n in lengths if n > max_length)
        return over / len(lengths), lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]

    @staticmethod
    def batch_size(batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])
