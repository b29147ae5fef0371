"""FedEx-LoRA: FedAvg of LoRA plus the exact residual folded into the frozen base weight."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean


def layer_names(names: list[str]) -> list[str]:
    return [n.removesuffix(".lora_A.weight") for n in names if n.endswith(".lora_A.weight")]


class FedExLoRA(Method):
    """FedEx-LoRA.

    A and B are averaged as in FedIT; the error term ``s (sum p_i B_i A_i - B_avg A_avg)`` (d_out x d_in,
    ``nn.Linear`` layout, float32) is broadcast and added to every client's frozen weight, so the global
    model equals the weighted mean of the clients' models exactly. The dense residual dominates download.
    """

    name = "fedex-lora"
    server_needs = "the products B_i A_i for the exact residual"
    adapter_mode = "lora"
    exact = True
    base_updates = True
    summary = "FedAvg of LoRA + exact residual folded into the base weight (dense d_in*d_out download)"
    plot_style = ("D", "tab:purple")
    relative_cost = 3

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * (d_in + d_out), r * (d_in + d_out) + d_in * d_out  # the residual travels densely

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        p = self.weights(updates)
        mean = weighted_mean(updates, list(state.adapter), p)
        pending: dict[str, Tensor] = {}
        for layer in layer_names(list(state.adapter)):
            a, b = f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"
            prod = torch.zeros(updates[0].payload[b].shape[0], updates[0].payload[a].shape[1], dtype=torch.float64,
                               device=updates[0].payload[b].device)
            for u, w in zip(updates, p, strict=True):
                prod.add_(u.payload[b].to(torch.float64) @ u.payload[a].to(torch.float64), alpha=w)
            prod.sub_(mean[b].to(torch.float64) @ mean[a].to(torch.float64))
            pending[f"{layer}.residual"] = (self.scaling * prod).to(torch.float32)
        return ServerState(round=state.round + 1, adapter=mean, pending=pending)

    def apply_base_update(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        for name, layer in adapted.layers.items():
            inc = payload.get(f"{name}.residual")
            if inc is not None:
                layer.add_residual(inc)
