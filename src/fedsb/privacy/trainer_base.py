"""What the simulator asks of a DP client trainer, beyond training one client.

The simulator looks these optional methods up on its trainer: ``init_messages`` (the clients' init
upload, privatised), ``budget_stop`` (a message when the next rounds would overspend), ``round_report``
(epsilon columns for the metrics row), ``privacy_summary``; the checkpoint code uses ``state_dict`` and
``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from fedsb.core.client import ClientTrainer
from fedsb.core.federation import Federation
from fedsb.privacy.accounting import Entry, PrivacyLedger, epsilon_of
from fedsb.privacy.noise import dp_generator, noise_label
from fedsb.privacy.plan import ClientPlan


class DPTrainer(ClientTrainer):
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

    # --- a Flower node's own budget (DESIGN.md 5.1: each party enforces its budget) ----------------------
    def round_cost(self, client: int) -> list[Entry]:
        """What one round adds to ``client``'s accountant (sample-level: its local DP-SGD steps; client-level:
        one Gaussian release at q = 1)."""
        plan = self.plans[str(client)]
        return [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]

    def init_cost(self, client: int) -> list[Entry]:
        plan = self.plans[str(client)]
        return [] if plan.init_sample_rate is None else [(plan.init_noise_multiplier, plan.init_sample_rate, 1)]

    def over_budget(self, client: int, cost: list[Entry], what: str) -> str | None:
        """A one-line refusal when ``cost`` would take ``client``'s own epsilon past ``dp.epsilon``."""
        if self.budget is None or not cost:
            return None
        eps = self.ledger.epsilon(client, cost)
        if eps > self.budget * (1 + 1e-9):
            return (f"refused: {what} would raise this node's epsilon from {self.ledger.epsilon(client):.4g} to {eps:.4g} "
                    f"> dp.epsilon = {self.budget:g} (delta = {self.ledger.delta:.3g})")
        return None

    def refusal(self, client: int, round_idx: int, scheduled: Sequence[int]) -> str | None:
        """Why a node must not train round ``round_idx`` (None: it may): the round is not in its schedule
        ``scheduled``, or it would overspend the node's own accountant. Checked on the node, before training."""
        if round_idx not in scheduled:
            return (f"refused: round {round_idx} is not one of this node's planned rounds "
                    f"({', '.join(map(str, scheduled)) or 'none'} of federation.rounds)")
        return self.over_budget(client, self.round_cost(client), f"round {round_idx}")

    def adopt_longer(self, party: str | int, history: Sequence[Sequence[float]]) -> bool:
        """On resume: take ``history`` (the server's record) only if it spends more than this party's own
        accountant; a party never lowers its own record. Returns whether it was taken."""
        from fedsb.privacy.accounting import merge_history

        theirs = merge_history(history)
        if self.ledger.epsilon(party, ()) >= epsilon_of(theirs, self.ledger.delta, self.ledger.mechanism):
            return False
        self.ledger.histories[str(party)] = theirs
        return True

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
