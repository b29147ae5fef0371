"""Fed-SB: clients train only R (r x r) between shared frozen B and A; the server averages R."""

from __future__ import annotations

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean


class FedSB(Method):
    """Federated LoRA-SB.

    Exact: B and A are shared and frozen, so ``s B (sum p_i R_i) A = sum p_i s B R_i A``. Traffic per round
    is ``r^2`` per layer each way (plus the head), independent of the number of clients. B and A are
    broadcast once at setup, in ``init.broadcast_bits`` (4 by default: ``fedsb.init.broadcast``); every party,
    the server included, uses the same decoded bases, so the average stays exact.
    """

    name = "fed-sb"
    adapter_mode = "lora-sb"
    exact = True
    additive = True
    summary = "LoRA-SB: train only r x r R between frozen B, A; average R (exact, r^2 per layer per round)"
    gradient_init = True
    core_rank = True
    plot_style = ("o", "tab:red")
    relative_cost = 2

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * r, r * r

    @classmethod
    def layer_one_time_download(cls, r: int, d_out: int, d_in: int) -> int:
        return r * (d_in + d_out)  # values; their bytes depend on init.broadcast_bits (fedsb.init.broadcast)

    @classmethod
    def default_lr(cls, rank: int) -> float:
        # Only R trains, so it takes a larger rate than LoRA; above r = 16 the rate shrinks with the rank
        # (r = 32 at 3e-2 can collapse to one class on the default task).
        return 3e-2 * min(1.0, 16 / rank)

    @classmethod
    def default_head_lr(cls, lr: float) -> float:
        return 3e-3  # R's large rate would destabilise the head

    def one_time_names(self, adapted: AdaptedModel) -> list[str]:
        return [f"{n}.{p}" for n in adapted.layers for p in ("lora_A.weight", "lora_B.weight")]

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, list(state.adapter), self.weights(updates))
        return ServerState(round=state.round + 1, adapter=mean)
