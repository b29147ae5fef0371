"""Where the LoRA-SB init gradient comes from, and what each source puts on the wire.

- ``federated`` (default): each client uploads the float32 sum of its raw gradients over ``init.samples``
  local examples; the server adds them and forms ``dW = -eta * sign(sum)``. Privacy: the server sees each
  client's gradient sum (under DP it is clipped per example and noised, see the DP docs).
- ``public``: the server computes the sum on a public/proxy data set it holds; nothing is uploaded and
  no private data is touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from fedsb.adapters.lora_sb_init import update_direction
from fedsb.comm import payload_bytes, payload_params


class InitSource(ABC):
    """Client encoding and server combination of init gradient sums."""

    name: str
    federated: bool = True

    def __init__(self, eta: float) -> None:
        self.eta = eta

    @abstractmethod
    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> dict[str, Tensor]:
        """What one client uploads for its local gradient sums."""

    @abstractmethod
    def combine(self, messages: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
        """Per-layer update direction ``dW`` (d_out x d_in) from the clients' messages."""

    def upload_bytes(self, message: dict[str, Tensor]) -> int:
        return payload_bytes(message, "float32")

    def upload_params(self, message: dict[str, Tensor]) -> int:
        return payload_params(message)


class DenseInit(InitSource):
    """Clients send dense float32 gradient sums; the server adds them."""

    name = "federated"

    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> dict[str, Tensor]:
        return {k: v.to(torch.float32) for k, v in grad_sums.items()}

    def combine(self, messages: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
        total = {k: torch.zeros_like(v) for k, v in messages[0][0].items()}
        for msg, _ in messages:
            for k, v in msg.items():
                total[k].add_(v)
        return {k: update_direction(v, self.eta) for k, v in total.items()}


class PublicInit(DenseInit):
    """The server's own gradient sum on public data: same maths, nothing on the wire."""

    name = "public"
    federated = False


INIT_SOURCES: dict[str, type[InitSource]] = {c.name: c for c in (DenseInit, PublicInit)}


def get_init_source(name: str, eta: float) -> InitSource:
    return INIT_SOURCES[name](eta)
