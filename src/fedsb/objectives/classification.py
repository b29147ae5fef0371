"""Sequence classification: cross-entropy on the classifier head, accuracy on held-out examples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from fedsb.objectives.base import Objective
from fedsb.tasks.base import Example


class ClassificationObjective(Objective):
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, device: torch.device | str = "cpu") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device(device)

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        enc = self.tokenizer(
            [e.text for e in examples], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in enc.items()}
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long, device=self.device)
        return batch

    def token_lengths(self, examples: list[Example]) -> list[int]:
        # Right truncation drops a text's end: in a premise/hypothesis pair, the hypothesis.
        ids = self.tokenizer([e.text for e in examples], truncation=False).input_ids
        return [len(x) for x in ids]

    @staticmethod
    def logits(model: nn.Module, batch: dict[str, Any]) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits.float()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def example_losses(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="none")

    def dp_loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        # Cross-entropy is already a mean of per-example losses; the same call keeps DP runs bit for bit.
        return self.loss(model, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int, progress: bool = False) -> dict[str, float]:
        was_training = model.training
        model.eval()
        correct, total, loss_sum = 0, 0, 0.0
        try:
            for i in tqdm(range(0, len(examples), batch_size), desc="eval", leave=False, disable=not progress):
                batch = self.collate(examples[i : i + batch_size])
                logits = self.logits(model, batch)
                loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
                correct += (logits.argmax(-1) == batch["labels"]).sum().item()
                total += len(batch["labels"])
        finally:
            model.train(was_training)
        return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}
