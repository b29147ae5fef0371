"""FedSA-LoRA: clients train A and B; only A is shared and averaged, B (and the task head) stay on each client."""

from __future__ import annotations

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean

A = "lora_A.weight"


class FedSALoRA(Method):
    """FedSA-LoRA (share A, keep B local).

    Each client trains ``s B_k A`` and the task head; it uploads A only (``r d_in`` per layer each way) and
    keeps ``B_k`` and its head across rounds (the simulator holds them per client and checkpoints them; a
    Flower node keeps them in its ``Context.state``). Not exact and personalised: there is no global model;
    client k's model after an aggregation is ``s B_k mean(A)``, and each client's own model is evaluated, on
    the common test set and on its own test share (``eval.personal``). A client not yet sampled starts from
    the server's initial B (0) and head.
    """

    name = "fedsa-lora"
    adapter_mode = "lora"
    exact = False
    additive = True
    personalised = True
    head_travels = False
    summary = "Share and average A; B and the head stay on each client (personalised, r*d_in per layer)"
    plot_style = ("X", "tab:pink")
    relative_cost = 2  # every evaluation scores each client's own model

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * d_in, r * d_in

    def upload_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.{A}" for n in adapted.layers]

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        return self.upload_names(adapted)

    def local_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.lora_B.weight" for n in adapted.layers] + adapted.head_state_names()

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, list(state.adapter), self.weights(updates))
        return ServerState(round=state.round + 1, adapter=mean)
