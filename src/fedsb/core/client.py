"""A client's side of a round, for either engine: the trainer interface and the default (non-private) trainer.

The engines talk to a :class:`ClientTrainer` only through the methods declared here. The default trains
with AdamW and has no privacy hooks; the DP trainers (``fedsb.privacy``) override the hooks: the
privatised init upload, the budget gate before each round, the epsilon columns of each row, the summary
section and the accountant state that checkpoints and Flower nodes keep.
"""

from __future__ import annotations

from typing import Any

import torch

from fedsb.core.federation import Federation
from fedsb.core.training import build_optimizer, local_train

InitMessage = tuple[dict[str, torch.Tensor], int]


class ClientTrainer:
    """Local training of one client per call, plus the run-level hooks a private trainer needs."""

    mode: str = "off"  # dp.mode of the trainer: off | sample | client

    def __call__(self, fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
        """Train ``client`` for its local steps of round ``round_idx``; returns its metrics (``train_loss``...)."""
        cfg = fed.cfg
        opt = build_optimizer(fed.adapted, fed.lr, fed.head_lr, cfg.train.weight_decay)
        return local_train(
            fed.adapted, fed.objective, fed.client_batches(client, round_idx), fed.local_steps(client), opt,
            fed.schedule(), step_offset, cfg.train.max_grad_norm,
        )

    # --- hooks (no-ops without DP) ------------------------------------------------------------------
    def init_messages(self, fed: Federation) -> list[InitMessage] | None:
        """The clients' LoRA-SB init uploads when the trainer must produce them itself (privatised); None = the
        engine asks the configured init source."""
        return None

    def round_gate(self, round_idx: int, rounds: int) -> tuple[str | None, bool]:
        """Before round ``round_idx`` of ``rounds``: (a stop message, whether it is the last round allowed)."""
        return None, False

    def round_report(self, round_idx: int) -> dict[str, Any]:
        """Columns this trainer adds to a round's metrics row (epsilon spent so far)."""
        return {}

    def privacy_summary(self) -> dict[str, Any] | None:
        """The ``privacy`` section of ``summary.json``; None without DP."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        """State a checkpoint (or a Flower node's ``Context.state``) must keep; None when there is none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`state_dict` returned."""


#: The default trainer; a plain function-like object kept for callers that train one client directly.
train_client = ClientTrainer()
