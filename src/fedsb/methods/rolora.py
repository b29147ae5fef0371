"""RoLoRA: alternating LoRA. Every round trains one factor, B in the rounds after an even number of server
aggregations (the first round: with B = 0 the gradient of A is 0), A after an odd number; the server averages it."""

from __future__ import annotations

from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean

A, B = "lora_A.weight", "lora_B.weight"


def active_factor(aggregations: int) -> str:
    """The factor trained in the round that starts after ``aggregations`` server aggregations."""
    return B if aggregations % 2 == 0 else A


class RoLoRA(Method):
    """RoLoRA (alternating minimisation for federated LoRA).

    The phase comes from the server's aggregation count (sent with every broadcast), never from a local
    counter, so a client that skipped rounds or a round the server skipped keeps every party in step. Exact
    per round: in a B round every client holds the same frozen A, so ``s (sum p_i B_i) A = sum p_i s B_i A``
    (the same for A rounds).

    Traffic: up is the active factor (``r d_out`` in B rounds, ``r d_in`` in A rounds, plus the head); a
    client that took part in the previous aggregation is sent only the factor that aggregation changed, and
    a client that missed rounds (or whose state is unknown) both factors (the catch-up, counted per client).
    """

    name = "rolora"
    adapter_mode = "lora"
    exact = True
    additive = True
    summary = "Alternating LoRA: B in one round, A in the next; average the active factor (exact, ~r(d_in+d_out)/2)"
    plot_style = ("*", "tab:brown")
    relative_cost = 1

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        # Steady state averaged over a B round and an A round (see ``phase_params`` for each).
        half = (r * (d_in + d_out)) // 2
        return half, half

    @classmethod
    def phase_params(cls, r: int, d_out: int, d_in: int, aggregations: int) -> tuple[int, int]:
        """(upload, download) of one layer in the round after ``aggregations`` aggregations, for a client that took
        part in the previous one (it is sent the factor that aggregation changed)."""
        up = r * d_out if active_factor(aggregations) == B else r * d_in
        changed = r * d_out if aggregations >= 1 and active_factor(aggregations - 1) == B else r * d_in
        return up, (changed if aggregations >= 1 else r * (d_in + d_out))

    @classmethod
    def default_lr(cls, rank: int) -> float:
        return 1e-2  # one factor trains at a time, like FFA-LoRA's B

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.{p}" for n in adapted.layers for p in (A, B)] + adapted.head_state_names()

    def begin_round(self, adapted: AdaptedModel, aggregations: int) -> None:
        frozen = A if active_factor(aggregations) == B else B
        for layer in adapted.layers.values():
            layer.freeze((frozen,))

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, sorted(updates[0].payload), self.weights(updates))  # the active factor and the head
        return ServerState(round=state.round + 1, adapter={**state.adapter, **mean})

    def download(self, broadcast: dict[str, Tensor], held: int, aggregations: int) -> dict[str, Tensor]:
        if aggregations < 1 or held != aggregations - 1:
            return broadcast  # never synced, missed rounds, unknown, or a skipped round (its factor is stale locally)
        changed = active_factor(aggregations - 1)
        return {k: v for k, v in broadcast.items() if k.endswith(changed) or not k.endswith((A, B))}
