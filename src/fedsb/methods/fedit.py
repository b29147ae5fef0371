"""FedIT: FedAvg of LoRA factors (averages A and B separately; not exact)."""

from __future__ import annotations

from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean


class FedIT(Method):
    """FedAvg of LoRA.

    Not exact: ``mean(B_i) mean(A_i) != mean(B_i A_i)``. Traffic per round ``r (d_in + d_out)`` per layer
    each way.
    """

    name = "fedit"
    adapter_mode = "lora"
    exact = False
    additive = True
    summary = "FedAvg of LoRA: average A and B separately (inexact: mean(B)mean(A) != mean(BA))"
    plot_style = ("s", "tab:blue")

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * (d_in + d_out), r * (d_in + d_out)

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, list(state.adapter), self.weights(updates))
        return ServerState(round=state.round + 1, adapter=mean)
