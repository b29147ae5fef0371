"""One adapted linear layer: a frozen base plus a float32 low-rank adapter.

    y = W0 x + b + residual x + s * B R A x      (mode "lora-sb": B, A frozen, R trained)
    y = W0 x + b + residual x + s * B A x        (mode "lora": A, B trained; mode "ffa": B trained)
    y = W0 x + b + sum_i s_i B_i H_i A_i x       (mode "ravan": h heads, B_i, A_i frozen, H_i and s_i trained)

`A`, `R`, `B` and RAVAN's `H_i` are bias-free ``nn.Linear`` modules so Opacus computes their per-sample
gradients with its built-in sampler; RAVAN's scalar `s_i` is a :class:`HeadScale`, whose sampler
``fedsb.privacy`` registers (this package does not import Opacus). RAVAN stores its bases stacked as one
rank ``h r_h`` LoRA (``lora_A = [A_1; ...; A_h]``, ``lora_B = [B_1 ... B_h]``), so it is a LoRA-SB layer whose
core is ``blockdiag(s_1 H_1, ..., s_h H_h)`` (:meth:`AdapterLayer.core_matrix`); it has no ``alpha / r``
scale, the trained ``s_i`` play that role. `residual` is an optional dense float32 buffer that methods such as FedEx-LoRA and FLoRA
fold aggregated updates into; it keeps the frozen base weight bit-identical and avoids rounding the
residual to a bf16 base. This module knows nothing about federation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

AdapterMode = Literal["lora-sb", "lora", "ffa", "ravan"]
ADAPTER_MODES: tuple[str, ...] = ("lora-sb", "lora", "ffa", "ravan")
#: RAVAN's data-free bases: QR-orthonormalised (default) or variance-scaled normal.
BasisInit = Literal["gram-schmidt", "normal"]


#: The layers an :class:`AdapterLayer` can wrap.
BaseLayer = nn.Linear | Conv1D


def base_shape(base: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (which stores the transpose)."""
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return int(d_out), int(d_in)
    if isinstance(base, nn.Linear):
        return int(base.out_features), int(base.in_features)
    raise TypeError(f"cannot adapt {type(base).__name__}: only nn.Linear and transformers Conv1D are supported")


def base_weight(base: BaseLayer) -> Tensor:
    """The base weight in ``nn.Linear`` layout (d_out x d_in), as a view when possible."""
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def lora_a_init(d_in: int, rank: int, generator: torch.Generator) -> Tensor:
    """PEFT's default A init (kaiming-uniform, a=sqrt(5): bound 1/sqrt(d_in)) from a local generator."""
    bound = 1.0 / math.sqrt(d_in)
    return (torch.rand(rank, d_in, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def ravan_bases(d_out: int, d_in: int, rank: int, init: BasisInit, generator: torch.Generator) -> tuple[Tensor, Tensor, BasisInit]:
    """RAVAN's stacked frozen bases ``(B, A, init used)``: ``B`` d_out x rank, ``A`` rank x d_in, float32.

    Drawn in float64 on the CPU from ``generator`` (B first, then A), so every party that knows the seed gets
    the same bits. ``gram-schmidt``: orthonormal columns of ``B`` and rows of ``A`` (QR with the signs fixed
    by R's diagonal); it needs ``rank <= min(d_in, d_out)`` and falls back to ``normal`` otherwise.
    ``normal``: ``B ~ N(0, 1/d_out)``, ``A ~ N(0, 1/d_in)``, so columns and rows have about unit norm, as with
    Gram-Schmidt (raw unit-variance entries would scale the update, and so the learning rate, by ``sqrt(d)``).
    """
    gb = torch.randn(d_out, rank, generator=generator, dtype=torch.float64)
    ga = torch.randn(d_in, rank, generator=generator, dtype=torch.float64)
    if init == "gram-schmidt" and rank <= min(d_in, d_out):
        b, a = orthonormal_columns(gb), orthonormal_columns(ga).T
        return b.to(torch.float32).contiguous(), a.to(torch.float32).contiguous(), "gram-schmidt"
    b, a = gb / math.sqrt(d_out), ga.T / math.sqrt(d_in)
    return b.to(torch.float32).contiguous(), a.to(torch.float32).contiguous(), "normal"


def orthonormal_columns(m: Tensor) -> Tensor:
    """Gram-Schmidt of ``m``'s columns (reduced QR, signs fixed so that R has a positive diagonal)."""
    q, r = torch.linalg.qr(m, mode="reduced")
    sign = torch.sign(torch.diagonal(r))
    return q * torch.where(sign == 0, torch.ones_like(sign), sign)


class HeadScale(nn.Module):
    """RAVAN's trainable scalar ``s_i`` of one head: ``y = s_i x`` (``weight`` of shape (1,), init 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class AdapterLayer(nn.Module):
    """A frozen ``nn.Linear``/``Conv1D`` with a float32 LoRA, LoRA-SB, FFA-LoRA or RAVAN adapter."""

    # Declared so that the type checker does not take them for nn.Module.__getattr__'s Tensor | Module.
    base: BaseLayer
    residual: Tensor | None  # a registered buffer

    def __init__(self, base: nn.Module, mode: AdapterMode, rank: int, alpha: float, heads: int = 1) -> None:
        super().__init__()
        if mode not in ADAPTER_MODES:
            raise ValueError(f"unknown adapter mode {mode!r}; expected one of {ADAPTER_MODES}")
        self.d_out, self.d_in = base_shape(base)
        assert isinstance(base, (nn.Linear, Conv1D))  # base_shape refused anything else
        if mode == "ravan":
            # RAVAN's stacked rank may exceed min(d_in, d_out) (its bases then fall back to random normal).
            if heads < 1 or rank < heads or rank % heads:
                raise ValueError(f"rank {rank} must be a positive multiple of heads = {heads}")
        elif heads != 1:
            raise ValueError(f"heads = {heads} needs adapter mode 'ravan', not {mode!r}")
        elif not 1 <= rank <= min(self.d_in, self.d_out):
            raise ValueError(f"rank {rank} must be between 1 and min(d_in, d_out) = {min(self.d_in, self.d_out)}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.mode: AdapterMode = mode
        self.rank = rank
        self.alpha = float(alpha)
        self.heads = heads
        self.head_rank = rank // heads
        # RAVAN has no alpha / r: the trained per-head s_i set the scale.
        self.scaling = 1.0 if mode == "ravan" else self.alpha / rank
        self.lora_A = nn.Linear(self.d_in, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, self.d_out, bias=False, dtype=torch.float32)
        self.lora_R = nn.Linear(rank, rank, bias=False, dtype=torch.float32) if mode == "lora-sb" else None
        self.lora_H: nn.ModuleList | None = None
        self.lora_s: nn.ModuleList | None = None
        if mode == "ravan":
            self.lora_H = nn.ModuleList(
                nn.Linear(self.head_rank, self.head_rank, bias=False, dtype=torch.float32) for _ in range(heads))
            self.lora_s = nn.ModuleList(HeadScale() for _ in range(heads))
        self.active_heads: tuple[int, ...] = tuple(range(heads))
        self.train_scale = True
        self.register_buffer("residual", None)
        self.adapter_enabled = True
        self.frozen: frozenset[str] = frozenset()  # adapter weights held fixed beyond the mode's (see ``freeze``)
        with torch.no_grad():
            self.lora_A.weight.zero_()
            self.lora_B.weight.zero_()
            if self.lora_R is not None:
                self.lora_R.weight.zero_()
            for h, _ in self.ravan_heads():
                h.weight.zero_()  # H_i = 0: the model starts at W0 (the bases must not be 0)
        self.set_trainable(True)

    # --- parameters -------------------------------------------------------------------------------
    def trainable_names(self) -> tuple[str, ...]:
        """Local names of the adapter weights this mode trains (RAVAN: ``H_i`` and ``s_i`` of the active heads)."""
        if self.mode == "ravan":
            scales = tuple(f"lora_s.{i}.weight" for i in self.active_heads) if self.train_scale else ()
            return tuple(f"lora_H.{i}.weight" for i in self.active_heads) + scales
        names = {"lora-sb": ("lora_R.weight",), "lora": ("lora_A.weight", "lora_B.weight"), "ffa": ("lora_B.weight",)}[
            self.mode
        ]
        return tuple(n for n in names if n not in self.frozen)

    def freeze(self, names: tuple[str, ...] = ()) -> None:
        """Hold these adapter weights fixed on top of the mode's own choice (RoLoRA's frozen factor); () = none."""
        self.frozen = frozenset(names)
        self.set_trainable(True)

    def adapter_names(self) -> tuple[str, ...]:
        names = ("lora_A.weight", "lora_B.weight")
        if self.mode == "ravan":
            return (names + tuple(f"lora_H.{i}.weight" for i in range(self.heads))
                    + tuple(f"lora_s.{i}.weight" for i in range(self.heads)))
        return names + ("lora_R.weight",) if self.lora_R is not None else names

    def set_active_heads(self, indices: Iterable[int]) -> None:
        """RAVAN: train only these heads (the others stay frozen and are not uploaded)."""
        if self.mode != "ravan":
            raise ValueError(f"adapter mode {self.mode!r} has no heads")
        active = tuple(sorted(set(indices)))
        if not active or not all(0 <= i < self.heads for i in active):
            raise ValueError(f"active heads {list(active)} must be a non-empty subset of 0..{self.heads - 1}")
        self.active_heads = active
        self.set_trainable(True)

    def ravan_heads(self) -> list[tuple[nn.Linear, HeadScale]]:
        """RAVAN: ``(H_i, s_i)`` modules of every head (empty for the other modes)."""
        if self.lora_H is None or self.lora_s is None:
            return []
        return [(cast(nn.Linear, h), cast(HeadScale, s)) for h, s in zip(self.lora_H, self.lora_s, strict=True)]

    def reset_scales(self) -> None:
        """RAVAN: ``s_i = 1`` for every head (done at every round start: the upload carried ``s_i H_i``)."""
        with torch.no_grad():
            for _, s in self.ravan_heads():
                s.weight.fill_(1.0)

    def head_products(self, heads: Iterable[int]) -> dict[int, Tensor]:
        """RAVAN: ``s_i H_i`` (r_h x r_h, float32) of the given heads: what a client uploads."""
        pairs = self.ravan_heads()
        assert pairs, "head_products needs adapter mode 'ravan'"
        return {i: pairs[i][1].weight * pairs[i][0].weight for i in heads}

    def set_trainable(self, on: bool) -> None:
        trainable = set(self.trainable_names()) if on else set()
        for name in self.adapter_names():
            self.get_parameter(name).requires_grad_(name in trainable)

    # --- maths --------------------------------------------------------------------------------------
    def core_matrix(self) -> Tensor | None:
        """The trained core between B and A: ``R`` (lora-sb), ``blockdiag(s_1 H_1, ..., s_h H_h)`` (ravan);
        None for modes whose update is ``B A``."""
        if self.lora_R is not None:
            return self.lora_R.weight
        if self.lora_H is not None:
            return torch.block_diag(*self.head_products(range(self.heads)).values())
        return None

    def adapter_product(self) -> Tensor:
        """The adapter's weight update ``s * B C A`` (C = :meth:`core_matrix`) or ``s * B A``, float32, d_out x d_in."""
        ba = self.lora_A.weight
        core = self.core_matrix()
        if core is not None:
            ba = core @ ba
        return self.scaling * (self.lora_B.weight @ ba)

    def delta_weight(self) -> Tensor:
        """Everything added to the frozen base weight: residual + adapter product (float32, d_out x d_in)."""
        delta = self.adapter_product() if self.adapter_enabled else torch.zeros(self.d_out, self.d_in, device=self.lora_A.weight.device)
        if self.residual is not None:
            delta = delta + self.residual
        return delta

    def add_residual(self, increment: Tensor) -> None:
        """Fold a dense float32 update into the frozen weight (kept apart from W0 so W0 stays exact), on the
        base weight's device (increments arrive as CPU tensors from the wire)."""
        if tuple(increment.shape) != (self.d_out, self.d_in):
            raise ValueError(f"residual shape {tuple(increment.shape)} != {(self.d_out, self.d_in)}")
        inc = increment.detach().to(device=self.base.weight.device, dtype=torch.float32)
        if self.residual is None:
            self.residual = inc.clone()
        else:
            self.residual.add_(inc)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(torch.float32)
        extra = None
        if self.residual is not None and isinstance(self.base, nn.Linear) and self.base.weight.dtype == x.dtype == torch.float32:
            # One matmul with W0 + residual instead of two (forward and input gradient); W0 itself is untouched.
            out = F.linear(x, self.base.weight + self.residual, self.base.bias)
        else:
            out = self.base(x)
            if self.residual is not None:
                extra = F.linear(x32, self.residual)
        if self.adapter_enabled:
            h = self.lora_A(x32)
            if self.lora_R is not None:
                h = self.lora_R(h)
            if self.lora_H is not None and self.lora_s is not None:
                # sum_i s_i B_i H_i A_i x = B cat_i(s_i H_i (A x)_i): one matmul with each stacked basis.
                chunks = h.split(self.head_rank, dim=-1)
                h = torch.cat([s(hh(c)) for c, hh, s in zip(chunks, self.lora_H, self.lora_s, strict=True)], dim=-1)
            h = self.lora_B(h) * self.scaling
            extra = h if extra is None else extra + h
        if extra is None:
            return out
        return out + extra.to(out.dtype)

    def extra_repr(self) -> str:
        heads = f", heads={self.heads}" if self.mode == "ravan" else ""
        return f"mode={self.mode}, rank={self.rank}{heads}, scaling={self.scaling:g}, d_in={self.d_in}, d_out={self.d_out}"
