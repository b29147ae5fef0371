"""FLoRA: the server stacks client factors; clients merge the stack into the base and restart the adapter."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, ServerState, weighted_mean
from fedsb.methods.fedex_lora import layer_names


class FLoRA(Method):
    """FLoRA (stacking).

    ``A = concat_rows(p_i A_i)`` (k r x d_in) and ``B = concat_cols(B_i)`` (d_out x k r), so
    ``s B A = sum_i p_i s B_i A_i`` exactly. Clients fold ``s B A`` into their frozen weight and restart a
    fresh adapter (A from the shared seed, B = 0). Download grows with the number of clients k.
    """

    name = "flora"
    server_needs = "the factors A_i, B_i to stack"
    adapter_mode = "lora"
    exact = True
    base_updates = True
    summary = "Stack client LoRA factors; clients merge the stack and restart (exact, download grows with k)"
    plot_style = ("v", "tab:orange")
    relative_cost = 3

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * (d_in + d_out), k * r * (d_in + d_out)  # every client receives the whole stack

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        # The fresh adapter is derived from the shared seed; only the head (if any) is broadcast as state.
        return adapted.head_state_names()

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        p = self.weights(updates)
        names = list(updates[0].payload)
        head = weighted_mean(updates, list(state.adapter), p)
        pending: dict[str, Tensor] = {}
        for layer in layer_names(names):
            a, b = f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"
            pending[f"{layer}.stack_A"] = torch.cat([w * u.payload[a] for u, w in zip(updates, p, strict=True)], dim=0)
            pending[f"{layer}.stack_B"] = torch.cat([u.payload[b] for u in updates], dim=1)
        return ServerState(round=state.round + 1, adapter=head, pending=pending)

    def apply_base_update(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        for name, layer in adapted.layers.items():
            sa, sb = payload.get(f"{name}.stack_A"), payload.get(f"{name}.stack_B")
            if sa is not None and sb is not None:
                layer.add_residual(self.scaling * (sb.to(torch.float64) @ sa.to(torch.float64)).to(torch.float32))

    def load_adapter(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        adapted.init_lora(self.seed)  # fresh adapter every round, identical on every client
        super().load_adapter(adapted, payload)
