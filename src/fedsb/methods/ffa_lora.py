"""FFA-LoRA: A random from a shared seed and frozen; clients train B only; the server averages B."""

from __future__ import annotations

from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean


class FFALoRA(Method):
    """Federated Freeze-A LoRA.

    Exact: A is shared and frozen, so ``s (sum p_i B_i) A = sum p_i s B_i A``. A is never transmitted
    (every party derives it from the shared seed); traffic per round ``r d_out`` per layer each way.
    """

    name = "ffa-lora"
    adapter_mode = "ffa"
    exact = True
    additive = True
    summary = "Freeze-A LoRA: A random from a shared seed, train and average B (exact, r*d_out per layer)"
    plot_style = ("^", "tab:green")

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * d_out, r * d_out

    @classmethod
    def default_lr(cls, rank: int) -> float:
        return 1e-2  # only B trains

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        mean = weighted_mean(updates, list(state.adapter), self.weights(updates))
        return ServerState(round=state.round + 1, adapter=mean)
