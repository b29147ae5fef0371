"""Differential privacy for fedsb runs (README "Differential privacy", DESIGN.md section 5).

- ``dp.mode = sample``: DP-SGD inside each client (:mod:`fedsb.privacy.sample_level`), one accountant per
  client kept across rounds, the LoRA-SB init privatised and charged to the same accountant.
- ``dp.mode = client``: DP-FedAvg, clipped client updates and server-side noise (:mod:`fedsb.privacy.client_dp`).

:func:`make_dp_trainer` returns the client trainer to hand to :class:`fedsb.simulation.simulator.Simulator`.
"""

from __future__ import annotations

from fedsb.core.federation import Federation
from fedsb.privacy.accounting import PrivacyLedger, epsilon_of, solve_noise_multiplier
from fedsb.privacy.trainer_base import DPTrainer

__all__ = ["DPTrainer", "PrivacyLedger", "epsilon_of", "make_dp_trainer", "solve_noise_multiplier"]


def make_dp_trainer(fed: Federation) -> DPTrainer | None:
    """The DP client trainer for ``fed.cfg.dp.mode`` (None when DP is off). Client-level DP also wraps
    ``fed.method`` so that the server clips-and-noises the aggregate."""
    mode = fed.cfg.dp.mode
    if mode == "sample":
        from fedsb.privacy.sample_level import SampleLevelDP

        return SampleLevelDP(fed)
    if mode == "client":
        from fedsb.privacy.client_dp import ClientLevelDP

        return ClientLevelDP(fed)
    return None
