"""The strategy interface shared by the federated methods (the builtins and any registered from outside).

A method says, for one round:

- what the server broadcasts (``broadcast``): adapter tensors plus, for FedEx-LoRA and FLoRA, a one-off
  base-weight increment produced by the previous aggregation;
- what a client does with a broadcast (``apply_base_update`` once per model, ``load_adapter`` before
  each client's local training);
- what a client trains and uploads (``client_update``);
- how the server aggregates uploads (``aggregate``).

Payloads are flat ``dict[str, Tensor]`` keyed by PEFT-style names (``<module>.lora_R.weight``), so the
in-process simulator and the Flower app use the same calls and the same bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from fedsb.adapters.layer import AdapterMode
from fedsb.adapters.model import AdaptedModel

if TYPE_CHECKING:
    from fedsb.config import RunConfig

Weighting = Literal["examples", "uniform"]
BASE_UPDATE_SUFFIXES = (".residual", ".stack_A", ".stack_B")


@dataclass
class ClientUpdate:
    """One client's upload for a round."""

    client_id: str
    payload: dict[str, Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ServerState:
    """What the server holds between rounds.

    ``adapter`` holds the global tensors broadcast every round; ``pending`` holds the base-weight increment
    produced by the last aggregation (FedEx residual, FLoRA stack), broadcast once and then folded in.
    """

    round: int
    adapter: dict[str, Tensor]
    pending: dict[str, Tensor] = field(default_factory=dict)


def aggregation_weights(updates: list[ClientUpdate], weighting: Weighting) -> list[float]:
    """``p_i = n_i / sum n`` (``examples``) or ``1/k`` (``uniform``)."""
    if not updates:
        raise ValueError("no client updates to aggregate")
    if weighting == "uniform":
        return [1.0 / len(updates)] * len(updates)
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ValueError("client example counts must be positive")
    return [u.num_examples / total for u in updates]


def weighted_mean(updates: list[ClientUpdate], names: list[str], p: list[float]) -> dict[str, Tensor]:
    """``sum_i p_i x_i`` for each name, accumulated in float64 and returned as float32."""
    out: dict[str, Tensor] = {}
    for n in names:
        acc = torch.zeros_like(updates[0].payload[n], dtype=torch.float64)
        for u, w in zip(updates, p, strict=True):
            acc.add_(u.payload[n].to(torch.float64), alpha=w)
        out[n] = acc.to(torch.float32)
    return out


def is_base_update(name: str) -> bool:
    return name.endswith(BASE_UPDATE_SUFFIXES)


class MethodOptions(BaseModel):
    """A method's own options, read from the config table ``[method_options]`` (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Method(ABC):
    """One federated fine-tuning method. Subclasses set the class attributes and ``aggregate``.

    Besides the payload calls, a method may override hooks that both engines call at the same points:
    :meth:`begin_round` (server and client: what trains this round), :meth:`prepare_client` (client: just
    before local training), :meth:`check_upload_names` (server: which names an upload may carry),
    :meth:`download` (server: what a client that already holds earlier state must be sent) and
    :meth:`local_names` (client: tensors each client keeps for itself across rounds and never uploads).
    """

    name: ClassVar[str]
    adapter_mode: ClassVar[AdapterMode]
    exact: ClassVar[bool]
    summary: ClassVar[str]
    #: Uploads are only ever summed (no products of client tensors): secure aggregation and client-level DP apply.
    additive: ClassVar[bool] = False
    #: For a method that is not additive: what its server needs from each client beyond the sum (error messages).
    server_needs: ClassVar[str] = "each client's individual tensors"
    #: Aggregation also yields a base-weight increment (``ServerState.pending``) every client folds in once.
    base_updates: ClassVar[bool] = False
    #: The adapters start from the gradient-based LoRA-SB init (a setup round that may read client data).
    gradient_init: ClassVar[bool] = False
    #: ``fedsb compare`` sweeps this method over ``--fedsb-ranks`` (its rank is r of an r x r core), else ``--lora-rank``.
    core_rank: ClassVar[bool] = False
    #: Marker and colour in the ``fedsb compare`` plot.
    plot_style: ClassVar[tuple[str, str]] = ("o", "tab:gray")
    #: Relative run time on the default task, so ``fedsb compare`` starts the longest runs first (measured).
    relative_cost: ClassVar[int] = 1
    #: The method's options (``[method_options]`` in the config); validated when the federation is assembled.
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: A trainable task head is uploaded and broadcast every round (FedSA-LoRA keeps it on each client).
    head_travels: ClassVar[bool] = True
    #: Each client keeps a model of its own (``local_names``): evaluation is per client, on its own test share.
    personalised: ClassVar[bool] = False

    # --- what the method knows about itself (used by the accounting, the CLI and the plots) ----------------
    @classmethod
    @abstractmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        """(upload, download) parameters per client per round for one adapted ``d_out x d_in`` layer at rank
        ``r`` with ``k`` clients per round (steady state; a task head is counted by the caller)."""

    @classmethod
    def layer_one_time_download(cls, r: int, d_out: int, d_in: int) -> int:
        """Parameters broadcast once at setup for one layer (Fed-SB's B and A). Default: none."""
        return 0

    def round_params(self, r: int, dims: list[tuple[int, int]], k: int, clients: int) -> tuple[int, int]:
        """(upload, download) parameters per client per round for layers of ``(d_out, d_in)`` under this
        instance's options, the largest over the ``clients`` clients where they differ (the class formula by
        default; RAVAN's head subsets upload less). A task head is counted by the caller."""
        up = down = 0
        for d_out, d_in in dims:
            u, dn = self.layer_round_params(r, d_out, d_in, k)
            up, down = up + u, down + dn
        return up, down

    def one_time_download(self, r: int, dims: list[tuple[int, int]]) -> int:
        """Parameters broadcast once per client for layers of ``(d_out, d_in)``, under this instance's options
        (the class formula by default; RAVAN's depends on its ``heads``)."""
        return sum(self.layer_one_time_download(r, d_out, d_in) for d_out, d_in in dims)

    @classmethod
    def default_lr(cls, rank: int) -> float:
        """Learning rate of the trained adapter tensors when ``train.lr`` is unset (calibrated on the default task)."""
        return 3e-3

    @classmethod
    def default_head_lr(cls, lr: float) -> float:
        """Learning rate of a task head when ``train.head_lr`` is unset. Default: the adapter's."""
        return lr

    @classmethod
    def adapter_kwargs(cls, options: MethodOptions) -> dict[str, Any]:
        """Extra keyword arguments of :class:`~fedsb.adapters.model.AdaptedModel` (RAVAN: its heads). Default: none."""
        return {}

    @classmethod
    def adapter_rank(cls, rank: int, options: MethodOptions) -> int:
        """The rank of the injected adapters for config rank ``rank`` (RAVAN: its heads' stacked rank). Default: ``rank``."""
        return rank

    @classmethod
    def check_config(cls, cfg: RunConfig, options: MethodOptions) -> None:
        """Refuse (``UsageError``, one line) a config this method cannot run, before any model loads. Default: none."""
        return None

    @classmethod
    def parse_options(cls, raw: dict[str, Any] | None) -> MethodOptions:
        """``[method_options]`` validated against :attr:`Options` (raises pydantic's ``ValidationError``)."""
        return cls.Options.model_validate(raw or {})

    def __init__(self, scaling: float, weighting: Weighting = "examples", seed: int = 0,
                 options: MethodOptions | None = None) -> None:
        self.scaling = float(scaling)
        self.weighting: Weighting = weighting
        self.seed = int(seed)
        self.options = options if options is not None else self.Options()

    # --- which tensors travel -----------------------------------------------------------------------
    def upload_names(self, adapted: AdaptedModel) -> list[str]:
        """Names a client uploads: what it trained (adapter weights of its mode and the head)."""
        return adapted.trainable_state_names()

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        """Adapter tensors the server sends every round (default: the trained ones)."""
        return self.upload_names(adapted)

    def one_time_names(self, adapted: AdaptedModel) -> list[str]:
        """Tensors broadcast once at setup and never again (Fed-SB's B and A)."""
        return []

    def local_names(self, adapted: AdaptedModel) -> list[str]:
        """Tensors each client keeps for itself across rounds and never uploads (FedSA-LoRA's B). Default: none."""
        return []

    # --- server ---------------------------------------------------------------------------------
    def init_adapter(self, adapted: AdaptedModel) -> None:
        """Data-free adapter init on the server when ``gradient_init`` is False (every party can repeat it)."""
        adapted.init_lora(self.seed)

    def check_upload_names(self, got: set[str], expected: list[str]) -> str | None:
        """Why an upload carrying ``got`` is malformed (None: it is not). Default: exactly ``expected``."""
        want = set(expected)
        if got == want:
            return None
        missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
        return f"tensor names differ from the expected update (missing {missing}, unexpected {extra})"

    def download(self, broadcast: dict[str, Tensor], held: int, aggregations: int) -> dict[str, Tensor]:
        """What a client must be sent when it last received the broadcast after ``held`` aggregations (-1: unknown)
        and the server has made ``aggregations``. Default: the whole broadcast."""
        return broadcast

    def initial_state(self, adapted: AdaptedModel) -> ServerState:
        """The round-0 global state, read from a model whose adapters were initialised by the server."""
        return ServerState(round=0, adapter=adapted.get_state(self.broadcast_names(adapted)))

    def broadcast(self, state: ServerState) -> dict[str, Tensor]:
        """The payload every sampled client receives at the start of the next round."""
        return {**state.adapter, **state.pending}

    @abstractmethod
    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        """Combine validated client updates into the next global state."""

    def weights(self, updates: list[ClientUpdate]) -> list[float]:
        return aggregation_weights(updates, self.weighting)

    # --- both sides -------------------------------------------------------------------------------
    def begin_round(self, adapted: AdaptedModel, aggregations: int) -> None:  # noqa: B027 (optional hook)
        """Called on the server's model and on each client's, with the server's aggregation count, after the
        broadcast is loaded and before training or validation: what trains this round. Default: nothing."""

    # --- client ---------------------------------------------------------------------------------
    def prepare_client(self, fed: Any, client: int, round_idx: int) -> None:  # noqa: B027 (optional hook)
        """Client side, right before local training (after :meth:`begin_round`); ``fed`` is the client's
        :class:`fedsb.core.federation.Federation` (methods sit below core: read it, do not import it). Default: nothing."""

    def apply_base_update(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:  # noqa: B027 (optional hook)
        """Fold a broadcast's base-weight increment into the model (once per model copy). Default: none."""

    def load_adapter(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        """Set the adapter to the broadcast state before local training."""
        adapted.set_state({k: v for k, v in payload.items() if not is_base_update(k)})

    def receive(self, adapted: AdaptedModel, payload: dict[str, Tensor]) -> None:
        """What a client with its own model copy does with a broadcast."""
        self.apply_base_update(adapted, payload)
        self.load_adapter(adapted, payload)

    def client_update(self, adapted: AdaptedModel) -> dict[str, Tensor]:
        return adapted.get_state(self.upload_names(adapted))
