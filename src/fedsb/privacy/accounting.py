"""Privacy accounting that lasts a whole run: one Opacus accountant per client, kept across rounds.

The reference code creates a new privacy engine every round, which silently resets the accountant and
under-reports epsilon by a factor of about the number of rounds. Here every client's accountant lives in a
:class:`PrivacyLedger` held by the server/simulator (and, in the Flower app, in each client's
``Context.state``); its state is plain JSON (``[noise_multiplier, sample_rate, steps]`` triples), so it
survives checkpoints and resumes.

The noise multiplier is solved once, before training, from the target (epsilon, delta) over the whole
planned run of a client: the privatised LoRA-SB init (if any) plus every local step of every round the
client takes part in. :func:`solve_noise_multiplier` handles such mixed histories (Opacus'
``get_noise_multiplier`` only knows a single (sample rate, steps) pair).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy.optimize import brentq

from fedsb.errors import FedsbError, UsageError

#: (noise multiplier, sample rate, steps): one homogeneous stretch of a subsampled Gaussian mechanism.
Entry = tuple[float, float, int]
ACCOUNTANTS = ("rdp", "prv")
MAX_SIGMA = 1e6
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS


def make_accountant(mechanism: str, history: Iterable[Sequence[float]] = ()) -> IAccountant:
    """An Opacus accountant of ``mechanism`` whose history is ``history`` (merged, steps > 0 only)."""
    if mechanism not in ACCOUNTANTS:
        raise UsageError(f"dp.accountant = {mechanism!r} is not supported; choose one of: {', '.join(ACCOUNTANTS)}")
    acc = create_accountant(mechanism=mechanism)
    acc.history = merge_history(history)
    return acc


def merge_history(history: Iterable[Sequence[float]]) -> list[Entry]:
    """Drop zero-step entries and merge neighbours with the same (sigma, q), as Opacus' ``step`` does."""
    out: list[Entry] = []
    for sigma, q, steps in history:
        steps = int(steps)
        if steps <= 0:
            continue
        if out and out[-1][0] == float(sigma) and out[-1][1] == float(q):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + steps)
        else:
            out.append((float(sigma), float(q), steps))
    return out


def epsilon_of(history: Iterable[Sequence[float]], delta: float, mechanism: str = "rdp") -> float:
    """Epsilon spent by ``history`` at ``delta`` (0 for an empty history, inf if any step has sigma 0)."""
    hist = merge_history(history)
    if not hist:
        return 0.0
    if any(sigma <= 0 and q > 0 for sigma, q, _ in hist):
        return math.inf
    if mechanism == "rdp":
        # RDPAccountant.get_epsilon's own arithmetic (rdp = sum steps * rdp_one_step), with the per-step
        # RDP curve cached: a run reuses a handful of (sigma, q) pairs but asks for epsilon very often.
        rdp = sum(steps * _rdp_one_step(sigma, q) for sigma, q, steps in hist)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    else:
        eps = make_accountant(mechanism, hist).get_epsilon(delta=delta, eps_error=0.01)
    # The RDP conversion can dip below 0 for tiny histories at a loose delta; epsilon is never negative.
    return max(0.0, float(eps))


@lru_cache(maxsize=4096)
def _rdp_one_step(sigma: float, q: float) -> np.ndarray:
    out = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDP_ORDERS)
    out.flags.writeable = False
    return out


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    stretches: Sequence[tuple[float, int]],
    mechanism: str = "rdp",
    fixed: Sequence[Entry] = (),
    rel_tol: float = 1e-4,
) -> float:
    """The sigma with ``epsilon(fixed + [(sigma, q, steps) ...])`` in ``[(1 - rel_tol) target, target]``.

    ``stretches`` are the (sample rate, steps) pairs that all use the solved sigma; ``fixed`` are entries
    whose sigma is already chosen (Opacus' ``get_noise_multiplier`` only knows a single (sample rate, steps)
    pair). epsilon is close to a power law in sigma, so SciPy's Brent root finder on ``log epsilon`` against
    ``log sigma`` needs a handful of accountant calls. Raises :class:`UsageError` when no sigma reaches the target.
    """

    def f(log_sigma: float) -> float:
        eps = epsilon_of([*fixed, *((math.exp(log_sigma), q, s) for q, s in stretches)], delta, mechanism)
        return math.log(max(eps, 1e-300)) - math.log(target_epsilon)

    if not any(s > 0 for _, s in stretches):
        return 0.0
    if fixed and epsilon_of(fixed, delta, mechanism) >= target_epsilon:
        raise UsageError(f"the fixed-noise steps alone spend dp.epsilon = {target_epsilon:g}; raise dp.init_noise_multiplier")
    lo = hi = 0.0  # log sigma
    f_hi = f(hi)
    while f_hi > 0:  # too little noise: grow until the target is met
        lo, hi = hi, hi + math.log(4)
        if hi > math.log(MAX_SIGMA):
            raise UsageError(
                f"dp.epsilon = {target_epsilon:g} cannot be reached at delta = {delta:.3g} with this many steps; "
                "raise dp.epsilon or train fewer rounds/steps"
            )
        f_hi = f(hi)
    while f(lo) <= 0:  # more than enough noise: shrink until it is not
        if lo < math.log(1e-3):
            return math.exp(hi)
        hi, lo = lo, lo - math.log(4)
    tol = -math.log1p(-rel_tol)  # log epsilon within rel_tol below the target
    x = brentq(f, lo, hi, xtol=tol / 16)
    while f(x) > 0:  # the root from the side of more noise: never above the target
        x += tol / 16
    return math.exp(x)


class PrivacyLedger:
    """Per-party accountants (party = a client id, or ``"server"`` for client-level DP), JSON-serialisable."""

    def __init__(self, mechanism: str = "rdp", delta: float = 1e-5) -> None:
        make_accountant(mechanism)  # validates the name
        self.mechanism = mechanism
        self.delta = float(delta)
        self.histories: dict[str, list[Entry]] = {}

    def spend(self, party: str | int, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        key = str(party)
        self.histories[key] = merge_history([*self.histories.get(key, []), (noise_multiplier, sample_rate, steps)])

    def history(self, party: str | int) -> list[Entry]:
        return list(self.histories.get(str(party), []))

    def epsilon(self, party: str | int, extra: Sequence[Entry] = ()) -> float:
        """Epsilon of ``party`` so far, or after ``extra`` further entries (a what-if, nothing is recorded)."""
        return epsilon_of([*self.history(party), *extra], self.delta, self.mechanism)

    def epsilons(self) -> dict[str, float]:
        return {k: self.epsilon(k) for k in sorted(self.histories, key=_party_order)}

    def accountant(self, party: str | int) -> IAccountant:
        """An Opacus accountant holding ``party``'s history (e.g. for ``get_epsilon`` at another delta)."""
        return make_accountant(self.mechanism, self.history(party))

    # --- serialisation (checkpoints, Flower Context.state) -----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "delta": self.delta,
            "histories": {k: [list(e) for e in v] for k, v in self.histories.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            mechanism, delta, hist = state["mechanism"], float(state["delta"]), state["histories"]
            parsed = {str(k): merge_history((float(s), float(q), int(n)) for s, q, n in v) for k, v in hist.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise FedsbError(f"invalid privacy ledger state ({e}); it must come from PrivacyLedger.state_dict()") from None
        if mechanism != self.mechanism or not math.isclose(delta, self.delta, rel_tol=1e-12):
            raise FedsbError(
                f"privacy ledger state uses {mechanism} at delta {delta:.3g} but this run uses {self.mechanism} at "
                f"delta {self.delta:.3g}; resume with the run's original dp settings"
            )
        self.histories = parsed

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        ledger = cls(state.get("mechanism", "rdp"), float(state.get("delta", 1e-5)))
        ledger.load_state_dict(state)
        return ledger


def _party_order(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)
