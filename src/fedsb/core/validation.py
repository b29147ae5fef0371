"""Server-side checks and bounds of every client update before aggregation (DESIGN §5.2).

An update is rejected (and excluded, with the client id and reason logged in ``metrics.jsonl``) when its
names differ from what the method expects, a tensor has the wrong shape or dtype or a non-finite value, or
its example count is not a positive integer, is implausible (above ``max_examples``, e.g. the whole data
set), or differs from the count the client declared at setup (:meth:`UpdateValidator.declare`).

Accepted updates are then bounded, so that one well-formed but hostile client cannot steer the round:

- **Weights.** A declared count counts at most ``federation.max_examples_factor`` x the median of the
  setup declarations (the lower median, so with two clients it is the smaller one): with three clients of
  equal size a client claiming 100x gets at most 2/(2+1+1) = 1/2 of the weight at the default 2.
- **Changes.** Each change ``u_i - reference`` (the reference is what the client started from: the
  broadcast adapter, or for FLoRA the fresh adapter it restarts from, plus the head) is clipped, i.e. scaled
  down, to ``bound_i = min(federation.norm_factor x the round's lower-median change, the absolute cap)``.
  The absolute cap (``federation.max_change_norm``; unset = :class:`TrainingBound`) is the largest change
  the configured local training (AdamW, ``train.lr``/``head_lr``, local steps, weight decay) can make, so it
  never clips an honest client and still binds with one or two clients, where the median is no help.
  Every clip is reported (:attr:`UpdateValidator.clipped`, the round row's ``clipped``), as is every capped
  count (``capped``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from fedsb.config import RunConfig
from fedsb.methods.base import ClientUpdate

#: ``torch.optim.AdamW``'s default betas, which :func:`fedsb.core.training.build_optimizer` uses (a test ties them).
#: (names an upload carries, names the method expects) -> why that is malformed, or None.
NameCheck = Callable[[set[str], list[str]], "str | None"]
ADAMW_BETAS = (0.9, 0.999)
WIRE_ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def lower_median(values: Iterable[float]) -> float:
    """The ``ceil(k/2)``-th smallest of ``k`` values: with two values the smaller, so one of two clients
    cannot raise it."""
    v = sorted(values)
    return v[(len(v) - 1) // 2]


def adam_ratio_bound(t: int, betas: tuple[float, float] = ADAMW_BETAS) -> float:
    """The largest ``|m_hat_t| / sqrt(v_hat_t)`` Adam can produce at step ``t`` (1-based), whatever the gradients.

    ``m_t = (1-b1) sum_k b1^(t-k) g_k`` and ``v_t = (1-b2) sum_k b2^(t-k) g_k^2``; Cauchy-Schwarz gives
    ``|m_t| <= (1-b1) sqrt(sum_j (b1^2/b2)^j) sqrt(v_t / (1-b2))``, times the bias corrections. It is 1 at
    t = 1 and tends to 7.27 for the default betas (typical honest steps are about 1).
    """
    b1, b2 = betas
    rho = b1 * b1 / b2
    s = t if rho == 1 else (1 - rho**t) / (1 - rho)
    return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(s)


def adamw_change_bound(steps: int, lr: float, numel: int, start_norm: float, weight_decay: float = 0.0,
                       betas: tuple[float, float] = ADAMW_BETAS) -> float:
    """An upper bound on ``||theta_T - theta_0||`` after ``steps`` AdamW steps at learning rates ``<= lr``.

    Per step AdamW decays ``theta`` by ``lr * wd`` and moves each coordinate by at most
    ``lr * adam_ratio_bound(t)``, so ``D_t <= (1 - lr wd) D_(t-1) + lr (wd ||theta_0|| + ratio_t sqrt(numel))``.
    Gradient clipping, the data and the schedule (whose factor never exceeds 1) cannot raise it.
    """
    d = 0.0
    shrink = abs(1 - lr * weight_decay)
    for t in range(1, steps + 1):
        d = shrink * d + lr * (weight_decay * start_norm + adam_ratio_bound(t, betas) * math.sqrt(numel))
    return d


@dataclass
class TrainingBound:
    """The absolute change cap derived from the run's local training: :func:`adamw_change_bound` per
    parameter group (adapter tensors at ``lr``, head tensors at ``head_lr``) for the client's local steps,
    plus the wire dtype's rounding of the upload."""

    lr: float
    head_lr: float
    weight_decay: float
    head_names: frozenset[str]
    local_steps: int
    local_epochs: float | None = None
    batch_size: int = 1

    @classmethod
    def for_federation(cls, fed: Any) -> TrainingBound:
        t = fed.cfg.train
        return cls(fed.lr, fed.head_lr, t.weight_decay, frozenset(fed.adapted.head_state_names()), t.local_steps,
                   t.local_epochs, t.batch_size)

    def steps(self, examples: int) -> int:
        """A client's optimizer steps per round (``Federation.local_steps`` for a shard of ``examples``)."""
        if self.local_epochs:
            return max(1, math.ceil(self.local_epochs * examples / self.batch_size))
        return self.local_steps

    def __call__(self, examples: int, reference: dict[str, Tensor], wire_dtype: str = "float32") -> float:
        steps = self.steps(examples)
        total_sq = ref_sq = 0.0
        for head in (False, True):
            refs = [t for k, t in reference.items() if (k in self.head_names) == head]
            if not refs:
                continue
            norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in refs))
            d = adamw_change_bound(steps, self.head_lr if head else self.lr, sum(t.numel() for t in refs), norm,
                                   self.weight_decay)
            total_sq += d * d
            ref_sq += norm * norm
        bound = math.sqrt(total_sq)
        # The upload is rounded to the wire dtype: allow that rounding of the end state (and of the start).
        return bound + 2 * WIRE_ROUNDOFF.get(wire_dtype, 2.0**-8) * (math.sqrt(ref_sq) + bound)


def change_norm(update: ClientUpdate, reference: dict[str, Tensor]) -> float:
    """``||u - reference||`` over every uploaded tensor (names missing from ``reference`` count from zero)."""
    total = 0.0
    for k, t in update.payload.items():
        ref = reference.get(k)
        d = t.double() if ref is None else t.double() - ref.to(device=t.device, dtype=torch.float64)
        total += float(d.pow(2).sum())
    return math.sqrt(total)


class UpdateValidator:
    def __init__(
        self, min_clients: int = 1, norm_factor: float = 2.0, max_examples: int | None = None, examples_factor: float = 2.0,
        max_change_norm: float | None = None, training_bound: TrainingBound | None = None,
    ) -> None:
        self.min_clients = min_clients
        self.norm_factor = norm_factor  # clip changes to norm_factor x the round's lower-median change (0 = off)
        self.max_examples = max_examples  # absolute cap on a declared example count (None = none)
        self.examples_factor = examples_factor  # counts weigh at most this x the median declaration (0 = off)
        self.max_change_norm = max_change_norm  # absolute change cap; None = training_bound, 0 = off
        self.training_bound = training_bound
        self.declared: dict[str, int] = {}  # client id -> example count declared at setup
        self.clipped: list[dict[str, Any]] = []  # the last filter's clips: {client, norm, bound}
        self.capped: list[dict[str, Any]] = []  # the last filter's capped counts: {client, examples, cap}

    @classmethod
    def from_config(cls, cfg: RunConfig, max_examples: int | None = None, fed: Any = None) -> UpdateValidator:
        """The validator a run's config asks for; ``max_examples``: the most examples any client can hold;
        ``fed`` (a :class:`fedsb.core.federation.Federation`): gives the absolute change cap of its local training
        when ``federation.max_change_norm`` is unset."""
        f = cfg.federation
        bound = TrainingBound.for_federation(fed) if fed is not None and f.max_change_norm is None else None
        # Client-level DP bounds each client by its own re-clip to C; a bound relative to the round's median would
        # make one client's clipping depend on the others' changes, which the DP accounting does not cover.
        norm_factor = 0.0 if cfg.dp.mode == "client" else f.norm_factor
        return cls(f.min_clients, norm_factor, max_examples, f.max_examples_factor, f.max_change_norm, bound)

    def declare(self, counts: dict[str, int]) -> None:
        """The example counts clients declared at setup: a round's count must equal its client's declaration."""
        self.declared = {str(k): int(v) for k, v in counts.items()}

    def without_bounds(self) -> UpdateValidator:
        """Format checks only: for a secure-aggregation mean, where no single client's update is visible."""
        v = copy.copy(self)
        v.norm_factor, v.examples_factor, v.max_change_norm, v.training_bound, v.declared = 0.0, 0.0, 0.0, None, {}
        v.clipped, v.capped = [], []
        return v

    def examples_cap(self, round_counts: list[int]) -> int | None:
        """The most examples one client's weight may count: ``examples_factor`` x the lower median of the setup
        declarations (of this round's counts when nothing was declared)."""
        if not self.examples_factor:
            return None
        counts = list(self.declared.values()) or round_counts
        return max(1, math.floor(self.examples_factor * lower_median(counts))) if counts else None

    def check(self, update: ClientUpdate, reference: dict[str, Tensor], names: list[str],
              name_check: NameCheck | None = None) -> str | None:
        """The reason to reject ``update``, or None. ``reference`` gives expected shapes of broadcast tensors;
        ``name_check`` (the method's :meth:`~fedsb.methods.base.Method.check_upload_names`) which names it may carry."""
        n = update.num_examples
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            return f"example count {n!r} is not a positive integer"
        if self.max_examples is not None and n > self.max_examples:
            return f"example count {n} exceeds the plausible maximum {self.max_examples}"
        if self.declared:
            want = self.declared.get(update.client_id)
            if want is None:
                return "the client declared no example count at setup"
            if n != want:
                return f"example count {n} differs from the {want} declared at setup"
        got, want_names = set(update.payload), set(names)
        if name_check is not None:
            why = name_check(got, names)
            if why:
                return why
        elif got != want_names:
            missing, extra = sorted(want_names - got)[:3], sorted(got - want_names)[:3]
            return f"tensor names differ from the expected update (missing {missing}, unexpected {extra})"
        for k, t in update.payload.items():
            if not isinstance(t, Tensor):
                return f"{k} is not a tensor"
            if t.dtype != torch.float32:
                return f"{k} has dtype {t.dtype}, expected torch.float32"
            ref = reference.get(k)
            if ref is not None and tuple(t.shape) != tuple(ref.shape):
                return f"{k} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            if not bool(torch.isfinite(t).all()):
                nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                what = " and ".join(w for w, c in (("NaN", nan), ("Inf", inf)) if c)
                return f"{k} contains {what} values (non-finite: {nan + inf} of {t.numel()})"
        return None

    @staticmethod
    def norm(update: ClientUpdate) -> float:
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.payload.values()))

    def absolute_cap(self, examples: int, reference: dict[str, Tensor], wire_dtype: str) -> float | None:
        """The absolute change cap of a client with ``examples`` (its checked count; local epochs scale with it)."""
        if self.max_change_norm is not None:
            return self.max_change_norm or None  # 0 = off
        return self.training_bound(examples, reference, wire_dtype) if self.training_bound is not None else None

    def filter(
        self, updates: list[ClientUpdate], reference: dict[str, Tensor], names: list[str], shapes: dict[str, tuple[int, ...]] | None = None,
        wire_dtype: str = "float32", name_check: NameCheck | None = None,
    ) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
        """Accepted (counts capped, changes clipped) and rejected updates. ``reference``: what every client
        started from, for each uploaded name (:func:`fedsb.core.rounds.server_step` builds it)."""
        accepted: list[ClientUpdate] = []
        rejected: list[tuple[ClientUpdate, str]] = []
        self.clipped, self.capped = [], []
        ref = dict(reference)
        if shapes:
            ref.update({k: torch.empty(s) for k, s in shapes.items() if k not in ref})
        for u in updates:
            why = self.check(u, ref, names, name_check)
            (rejected.append((u, why)) if why else accepted.append(u))
        counts = [u.num_examples for u in accepted]  # before capping: local epochs scale with the real count
        cap = self.examples_cap(counts)
        if cap is not None:
            for i, u in enumerate(accepted):
                if u.num_examples > cap:
                    self.capped.append({"client": u.client_id, "examples": u.num_examples, "cap": cap})
                    accepted[i] = replace(u, num_examples=cap)
        norms = [change_norm(u, reference) for u in accepted]
        median = lower_median(norms) if norms else 0.0
        for i, (u, nrm, n) in enumerate(zip(accepted, norms, counts, strict=True)):
            bounds = [b for b in (self.norm_factor * median if self.norm_factor and median > 0 else None,
                                  self.absolute_cap(n, reference, wire_dtype)) if b is not None]
            bound = min(bounds) if bounds else math.inf
            if nrm > bound:
                self.clipped.append({"client": u.client_id, "norm": nrm, "bound": bound})
                accepted[i] = replace(u, payload=clip_change(u.payload, reference, bound / nrm))
        return accepted, rejected


def clip_change(payload: dict[str, Tensor], reference: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """``reference + scale (payload - reference)`` for every tensor (float64 arithmetic, float32 result)."""
    out = {}
    for k, t in payload.items():
        ref = reference.get(k)
        r = torch.zeros((), dtype=torch.float64, device=t.device) if ref is None else ref.to(device=t.device, dtype=torch.float64)
        out[k] = (r + scale * (t.double() - r)).to(torch.float32)
    return out



def all_finite(state: dict[str, Tensor]) -> bool:
    """True when every floating tensor of ``state`` is finite. A client whose local training diverged keeps its
    previous personal tensors (the server refuses the shared part of such an update for the same reason)."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
