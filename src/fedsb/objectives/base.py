"""The objective interface: collate examples, compute a mean loss, evaluate a model."""

from __future__ import annotations

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
    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int, progress: bool = False) -> dict[str, float]:
        """Metrics on held-out examples (at least ``accuracy`` and ``loss`` where defined)."""

    @staticmethod
    def batch_size(batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])
