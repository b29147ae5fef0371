"""Streaming aggregation: fold client updates one at a time instead of holding all ``k`` in memory.

``Method.aggregate`` takes the whole list of a round's updates, which is simple but keeps ``k`` payloads
alive. A server that receives updates one by one can fold each into an accumulator and drop it:

- Fed-SB, FedIT, FFA-LoRA (weighted means): ``sum_i w_i x_i`` and ``sum_i w_i`` in float64; memory is one
  copy of the broadcast state, whatever ``k``.
- FedEx-LoRA: the means as above plus ``sum_i w_i B_i A_i`` per layer (dense, float64): constant in ``k``,
  but as large as the adapted weights.
- FLoRA: the stack *is* ``k`` clients' factors (and so is the broadcast), so its memory grows with ``k``.

``w_i`` is ``n_i`` (``examples`` weighting) or 1 (``uniform``); dividing by ``sum w`` at the end gives the
same ``p_i = n_i / sum n`` as the list-based path without knowing ``sum n`` in advance. Results equal
``method.aggregate(state, updates)`` up to float64 rounding (``tests/methods/test_streaming.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedsb.methods.base import ClientUpdate, Method, ServerState
from fedsb.methods.fedex_lora import FedExLoRA, layer_names
from fedsb.methods.flora import FLoRA


class StreamingAggregator:
    """Weighted mean of the broadcast state, one update at a time (Fed-SB, FedIT, FFA-LoRA)."""

    def __init__(self, method: Method, state: ServerState) -> None:
        self.method = method
        self.state = state
        self.names = list(state.adapter)
        self.sums: dict[str, Tensor] = {}
        self.total = 0.0
        self.count = 0

    def weight(self, update: ClientUpdate) -> float:
        if self.method.weighting == "uniform":
            return 1.0
        if update.num_examples <= 0:
            raise ValueError("client example counts must be positive")
        return float(update.num_examples)

    def add(self, update: ClientUpdate) -> None:
        """Fold one client's update in; the caller may drop it afterwards."""
        w = self.weight(update)
        for n in self.names:
            x = update.payload[n].to(torch.float64)
            if n in self.sums:
                self.sums[n].add_(x, alpha=w)
            else:
                self.sums[n] = x * w
        self._add_extra(update, w)
        self.total += w
        self.count += 1

    def _add_extra(self, update: ClientUpdate, w: float) -> None:
        """Method-specific accumulation (FedEx-LoRA products, FLoRA stack)."""

    def means(self) -> dict[str, Tensor]:
        if not self.count:
            raise ValueError("no client updates to aggregate")
        return {n: (s / self.total).to(torch.float32) for n, s in self.sums.items()}

    def result(self) -> ServerState:
        return ServerState(round=self.state.round + 1, adapter=self.means())


class FedExStreamingAggregator(StreamingAggregator):
    """FedEx-LoRA: the means plus a dense float64 ``sum_i w_i B_i A_i`` per layer."""

    def __init__(self, method: Method, state: ServerState) -> None:
        super().__init__(method, state)
        self.layers = layer_names(self.names)
        self.products: dict[str, Tensor] = {}

    def _add_extra(self, update: ClientUpdate, w: float) -> None:
        for layer in self.layers:
            a = update.payload[f"{layer}.lora_A.weight"].to(torch.float64)
            b = update.payload[f"{layer}.lora_B.weight"].to(torch.float64)
            if layer in self.products:
                self.products[layer].addmm_(b, a, alpha=w)
            else:
                self.products[layer] = torch.mm(b, a).mul_(w)

    def result(self) -> ServerState:
        mean = self.means()
        pending: dict[str, Tensor] = {}
        for layer, prod in self.products.items():
            a, b = mean[f"{layer}.lora_A.weight"], mean[f"{layer}.lora_B.weight"]
            res = (prod / self.total).sub_(b.to(torch.float64) @ a.to(torch.float64))
            pending[f"{layer}.residual"] = (self.method.scaling * res).to(torch.float32)
        return ServerState(round=self.state.round + 1, adapter=mean, pending=pending)


class FLoRAStreamingAggregator(StreamingAggregator):
    """FLoRA: keeps every client's factors (the stack grows with ``k`` by construction); the head is averaged."""

    def __init__(self, method: Method, state: ServerState) -> None:
        super().__init__(method, state)
        self.factors: list[tuple[float, dict[str, Tensor]]] = []

    def _add_extra(self, update: ClientUpdate, w: float) -> None:
        keep = {n: t for n, t in update.payload.items() if n.endswith((".lora_A.weight", ".lora_B.weight"))}
        self.factors.append((w, keep))

    def result(self) -> ServerState:
        if not self.count:
            raise ValueError("no client updates to aggregate")
        head = self.means()
        pending: dict[str, Tensor] = {}
        for layer in layer_names(list(self.factors[0][1])):
            a, b = f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"
            pending[f"{layer}.stack_A"] = torch.cat([(w / self.total) * f[a] for w, f in self.factors], dim=0)
            pending[f"{layer}.stack_B"] = torch.cat([f[b] for _, f in self.factors], dim=1)
        return ServerState(round=self.state.round + 1, adapter=head, pending=pending)


def streaming_aggregator(method: Method, state: ServerState) -> StreamingAggregator:
    """The accumulator for ``method``: ``agg.add(update)`` per client, then ``agg.result()``."""
    if isinstance(method, FedExLoRA):
        return FedExStreamingAggregator(method, state)
    if isinstance(method, FLoRA):
        return FLoRAStreamingAggregator(method, state)
    return StreamingAggregator(method, state)
