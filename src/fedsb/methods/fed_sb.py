"""Fed-SB: clients train only R (r x r) between shared frozen B and A; the server averages R."""

from __future__ import annotations

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean


class FedSB(Method):
    """Federated LoRA-SB.

    Exact: B and A are shared and frozen, so ``s B (sum p_i R_i) A = sum p_i s B R_i A``. Traffic per round
    is ``r^2`` per layer each way (plus the head), independent of the number of clients. B and A are
    broadcast once at setup.
    """

    name = "fed-sb"
    adapter_mode = "lora-sb"
    exact = True
    additive = True
    summary = "LoRA-SB: train only r x r R between frozen B, A; average R (exact, r^2 per layer per round)"

    def one_time_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.{p}" for n in adapted.layers for p in ("lora_A.weight", "lora_B.weight")]

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, list(state.adapter), self.weights(updates))
        return ServerState(round=state.round + 1, adapter=mean)
