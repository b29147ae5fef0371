"""What the simulator asks of a DP client trainer, beyond training one client.

The simulator looks these optional methods up on its trainer: ``init_messages`` (the clients' init
upload, privatised), ``budget_stop`` (a message when the next rounds would overspend), ``round_report``
(epsilon columns for the metrics row), ``privacy_summary``; the checkpoint code uses ``state_dict`` and
``load_state_dict``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedsb.federation import Federation
from fedsb.privacy.accounting import PrivacyLedger
from fedsb.privacy.noise import dp_generator, noise_label
from fedsb.privacy.plan import ClientPlan


class DPTrainer:
    """Shared bookkeeping: a ledger, a plan per party, a budget, and the reporting around them."""

    mode: str = ""
    label: str = ""

    def __init__(self, fed: Federation, ledger: PrivacyLedger, plans: dict[str, ClientPlan], budget: float | None) -> None:
        self.fed = fed
        self.ledger = ledger
        self.plans = plans
        self.budget = budget

    def __call__(self, fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
        raise NotImplementedError

    def generator(self, *parts: int, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator on ``device`` for one party's DP sampling and noise: seeded from operating-system
        entropy, secret from the server and everyone else (``parts`` name the use only under
        ``dp.reproducible_noise``, which derives it from the config seed: not private)."""
        return dp_generator(self.fed.cfg, *parts, device=device)

    # --- budget and reporting ----------------------------------------------------------------------
    def budget_stop(self, rounds: list[int]) -> str | None:
        """A stop message if running ``rounds`` (from the current state) would exceed ``dp.epsilon``."""
        if self.budget is None:
            return None
        for party, plan in self.plans.items():
            eps = self.ledger.epsilon(party, plan.round_entries(rounds))
            if eps > self.budget * (1 + 1e-9):
                who = "the clients" if party == "clients" else f"client {party}"
                return (f"privacy budget exhausted: round {rounds[-1]} would raise the epsilon of {who} to {eps:.4g} > "
                        f"dp.epsilon = {self.budget:g} (delta = {self.ledger.delta:.3g})")
        return None

    def round_gate(self, round_idx: int, rounds: int) -> tuple[str | None, bool]:
        """Before round ``round_idx`` of ``rounds``: (a stop message if it would overspend, whether it is the
        last round the budget allows, so that it gets the final evaluation)."""
        stop = self.budget_stop([round_idx])
        return stop, stop is None and round_idx < rounds and self.budget_stop([round_idx, round_idx + 1]) is not None

    def epsilons(self) -> dict[str, float]:
        return {party: self.ledger.epsilon(party) for party in self.plans}

    def round_report(self, round_idx: int) -> dict[str, Any]:
        eps = self.epsilons()
        finite = [e for e in eps.values()]
        return {
            "dp_mode": self.mode,
            "epsilon": max(finite) if finite else 0.0,
            "epsilon_clients": {k: _json_float(v) for k, v in eps.items()},
            "delta": self.ledger.delta,
            "dp_noise": noise_label(self.fed.cfg),  # "secret", or reproducible and labelled not private
        }

    def privacy_summary(self) -> dict[str, Any]:
        eps = self.epsilons()
        return {
            "mode": self.mode,
            "label": self.label,
            "noise": noise_label(self.fed.cfg),
            "accountant": self.ledger.mechanism,
            "delta": self.ledger.delta,
            "target_epsilon": self.budget,
            "max_grad_norm": self.fed.cfg.dp.max_grad_norm,
            "epsilon": _json_float(max(eps.values())) if eps else 0.0,
            "parties": {
                k: {
                    "epsilon": _json_float(eps[k]),
                    "noise_multiplier": p.noise_multiplier,
                    "sample_rate": p.sample_rate,
                    "steps_per_round": p.steps_per_round,
                    "rounds_planned": len(p.rounds),
                    "init_sample_rate": p.init_sample_rate,
                    "init_noise_multiplier": p.init_noise_multiplier if p.init_sample_rate is not None else None,
                    "size": p.size,
                    "history": [list(e) for e in self.ledger.history(k)],
                }
                for k, p in self.plans.items()
            },
        }

    # --- checkpoints / Flower Context.state ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "ledger": self.ledger.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state["ledger"])


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
