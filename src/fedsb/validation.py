"""Server-side checks of every client update before aggregation.

An update is rejected (and excluded, with the client id and reason logged in ``metrics.jsonl``) when its
names differ from what the method expects, a tensor has the wrong shape or dtype or a non-finite value,
its norm is far above the round's median, or its declared example count is not positive or implausible
(above ``max_examples``, e.g. the whole data set, or far above the round's median count). The bounds come
from ``federation.norm_factor`` and ``federation.max_examples_factor`` (:meth:`UpdateValidator.from_config`).
Robust checks against the round's median need at least three valid updates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsb.config import RunConfig
from fedsb.methods.base import ClientUpdate


class UpdateValidator:
    def __init__(
        self, min_clients: int = 1, norm_factor: float = 100.0, max_examples: int | None = None, examples_factor: float = 0.0
    ) -> None:
        self.min_clients = min_clients
        self.norm_factor = norm_factor  # reject updates whose norm exceeds norm_factor x the round median
        self.max_examples = max_examples  # absolute cap on a declared example count (None = none)
        self.examples_factor = examples_factor  # reject counts above examples_factor x the round median (0 = off)

    @classmethod
    def from_config(cls, cfg: RunConfig, max_examples: int | None = None) -> UpdateValidator:
        """The validator a run's config asks for; ``max_examples``: the most examples any client can hold."""
        f = cfg.federation
        return cls(f.min_clients, f.norm_factor, max_examples, f.max_examples_factor)

    def check(self, update: ClientUpdate, reference: dict[str, Tensor], names: list[str]) -> str | None:
        """The reason to reject ``update``, or None. ``reference`` gives expected shapes of broadcast tensors."""
        n = update.num_examples
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            return f"example count {n!r} is not a positive integer"
        if self.max_examples is not None and n > self.max_examples:
            return f"example count {n} exceeds the plausible maximum {self.max_examples}"
        got, want = set(update.payload), set(names)
        if got != want:
            missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
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

    def filter(
        self, updates: list[ClientUpdate], reference: dict[str, Tensor], names: list[str], shapes: dict[str, tuple[int, ...]] | None = None
    ) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
        accepted: list[ClientUpdate] = []
        rejected: list[tuple[ClientUpdate, str]] = []
        ref = dict(reference)
        if shapes:
            ref.update({k: torch.empty(s) for k, s in shapes.items() if k not in ref})
        for u in updates:
            why = self.check(u, ref, names)
            (rejected.append((u, why)) if why else accepted.append(u))
        if len(accepted) >= 3 and self.examples_factor:
            counts = sorted(u.num_examples for u in accepted)
            median = counts[len(counts) // 2]
            keep = []
            for u in accepted:
                if u.num_examples > self.examples_factor * median:
                    rejected.append((u, f"example count {u.num_examples} exceeds {self.examples_factor:g}x the round median {median}"))
                else:
                    keep.append(u)
            accepted = keep
        if len(accepted) >= 3 and self.norm_factor:
            norms = [self.norm(u) for u in accepted]
            median = sorted(norms)[len(norms) // 2]
            keep = []
            for u, nrm in zip(accepted, norms, strict=True):
                if median > 0 and nrm > self.norm_factor * median:
                    rejected.append((u, f"update norm {nrm:.3g} exceeds {self.norm_factor:g}x the round median {median:.3g}"))
                else:
                    keep.append(u)
            accepted = keep
        return accepted, rejected
