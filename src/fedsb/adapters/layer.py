"""One adapted linear layer: a frozen base plus a float32 low-rank adapter.

    y = W0 x + b + residual x + s * B R A x      (mode "lora-sb": B, A frozen, R trained)
    y = W0 x + b + residual x + s * B A x        (mode "lora": A, B trained; mode "ffa": B trained)

`A`, `R`, `B` are bias-free ``nn.Linear`` modules so Opacus computes their per-sample gradients with its
built-in sampler. `residual` is an optional dense float32 buffer that methods such as FedEx-LoRA and FLoRA
fold aggregated updates into; it keeps the frozen base weight bit-identical and avoids rounding the
residual to a bf16 base. This module knows nothing about federation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

AdapterMode = Literal["lora-sb", "lora", "ffa"]
ADAPTER_MODES: tuple[str, ...] = ("lora-sb", "lora", "ffa")


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


class AdapterLayer(nn.Module):
    """A frozen ``nn.Linear``/``Conv1D`` with a float32 LoRA, LoRA-SB or FFA-LoRA adapter."""

    # Declared so that the type checker does not take them for nn.Module.__getattr__'s Tensor | Module.
    base: BaseLayer
    residual: Tensor | None  # a registered buffer

    def __init__(self, base: nn.Module, mode: AdapterMode, rank: int, alpha: float) -> None:
        super().__init__()
        if mode not in ADAPTER_MODES:
            raise ValueError(f"unknown adapter mode {mode!r}; expected one of {ADAPTER_MODES}")
        self.d_out, self.d_in = base_shape(base)
        assert isinstance(base, (nn.Linear, Conv1D))  # base_shape refused anything else
        if not 1 <= rank <= min(self.d_in, self.d_out):
            raise ValueError(f"rank {rank} must be between 1 and min(d_in, d_out) = {min(self.d_in, self.d_out)}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.mode: AdapterMode = mode
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.lora_A = nn.Linear(self.d_in, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, self.d_out, bias=False, dtype=torch.float32)
        self.lora_R = nn.Linear(rank, rank, bias=False, dtype=torch.float32) if mode == "lora-sb" else None
        self.register_buffer("residual", None)
        self.adapter_enabled = True
        with torch.no_grad():
            self.lora_A.weight.zero_()
            self.lora_B.weight.zero_()
            if self.lora_R is not None:
                self.lora_R.weight.zero_()
        self.set_trainable(True)

    # --- parameters -------------------------------------------------------------------------------
    def trainable_names(self) -> tuple[str, ...]:
        """Local names of the adapter weights this mode trains."""
        return {"lora-sb": ("lora_R.weight",), "lora": ("lora_A.weight", "lora_B.weight"), "ffa": ("lora_B.weight",)}[
            self.mode
        ]

    def adapter_names(self) -> tuple[str, ...]:
        names = ("lora_A.weight", "lora_B.weight")
        return names + ("lora_R.weight",) if self.lora_R is not None else names

    def set_trainable(self, on: bool) -> None:
        trainable = set(self.trainable_names()) if on else set()
        for name in self.adapter_names():
            self.get_parameter(name).requires_grad_(name in trainable)

    # --- maths --------------------------------------------------------------------------------------
    def adapter_product(self) -> Tensor:
        """The adapter's weight update ``s * B R A`` (or ``s * B A``), float32, d_out x d_in."""
        ba = self.lora_A.weight
        if self.lora_R is not None:
            ba = self.lora_R.weight @ ba
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
            h = self.lora_B(h) * self.scaling
            extra = h if extra is None else extra + h
        if extra is None:
            return out
        return out + extra.to(out.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, rank={self.rank}, scaling={self.scaling:g}, d_in={self.d_in}, d_out={self.d_out}"
