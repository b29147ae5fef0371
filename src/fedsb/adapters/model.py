"""Inject adapters into any Hugging Face model and read/write their state under strict names.

State names follow PEFT's layout: ``<module>.lora_A.weight`` (r x d_in), ``<module>.lora_B.weight``
(d_out x r), plus ``<module>.lora_R.weight`` (r x r) for LoRA-SB, ``<module>.lora_H.<i>.weight`` (r_h x r_h) and
``<module>.lora_s.<i>.weight`` (1) for RAVAN's head i, and ``<head>.<param>`` for a trainable task head
(``modules_to_save`` in PEFT's terms).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.layer import AdapterLayer, AdapterMode, BasisInit, lora_a_init, ravan_bases
from fedsb.errors import UsageError


def _matches(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_module_names(model: nn.Module) -> list[str]:
    """Suffixes a user may pass as targets: the last component of every linear-like module name."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


class AdaptedModel(nn.Module):
    """A Hugging Face model whose target linear layers carry adapters; only adapters and head train.

    RAVAN (``mode = "ravan"``): ``rank`` is the total ``heads * r_h`` of the stacked bases; ``trainable_scale``
    False keeps every ``s_i`` at 1 (the paper's constant-scale variant).
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Iterable[str],
        mode: AdapterMode,
        rank: int,
        alpha: float | None = None,
        head: Iterable[str] = (),
        heads: int = 1,
        trainable_scale: bool = True,
    ) -> None:
        super().__init__()
        if mode == "ravan" and (heads < 1 or rank < heads or rank % heads):
            raise UsageError(f"RAVAN's total rank {rank} is not a positive multiple of heads = {heads}; "
                             f"set a rank divisible by {heads} or change the number of heads")
        if mode != "ravan" and heads != 1:
            raise UsageError(f"heads = {heads} is a RAVAN option; adapter mode {mode!r} has one adapter per layer")
        self.model = model
        self.mode: AdapterMode = mode
        self.rank = rank
        self.heads = heads
        self.alpha = float(alpha if alpha is not None else rank)
        self.targets = list(targets)
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers: dict[str, AdapterLayer] = {}
        candidates = [
            (n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and _matches(n, self.targets)
        ]
        head_names = list(head)
        candidates = [(n, m) for n, m in candidates if not _matches(n, head_names)]
        if not candidates:
            raise UsageError(
                f"target modules {self.targets} match no linear layer in the model; "
                f"set model.targets to some of: {', '.join(linear_module_names(model))}"
            )
        for name, module in candidates:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            try:
                layer = AdapterLayer(module, mode, rank, self.alpha, heads)
            except ValueError as e:
                raise UsageError(f"cannot adapt {name}: {e}; lower adapter.rank") from None
            if not trainable_scale:
                layer.train_scale = False
                layer.set_trainable(True)
            setattr(parent, child, layer)
            self.layers[name] = layer
        self.head_modules: dict[str, nn.Module] = {}
        for h in head_names:
            found = [(n, m) for n, m in model.named_modules() if n and _matches(n, [h])]
            if not found:
                raise UsageError(f"head module {h!r} not found in the model; set model.head to an existing module or []")
            for n, m in found:
                self.head_modules[n] = m
                for p in m.parameters():
                    p.requires_grad_(True)

    def unload(self) -> nn.Module:
        """Put the original base modules back (adapters and residuals dropped) and return the bare model.

        Base weights are never modified by training, so the returned model is the one that was wrapped
        (frozen, except for whatever the head trained). Lets one model load serve many adapter set-ups.
        """
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, layer.base)
        self.layers = {}
        return self.model

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # --- names and state ----------------------------------------------------------------------------
    def head_state_names(self) -> list[str]:
        return [f"{n}.{p}" for n, m in self.head_modules.items() for p, _ in m.named_parameters()]

    def adapter_state_names(self) -> list[str]:
        return [f"{n}.{p}" for n, layer in self.layers.items() for p in layer.adapter_names()]

    def trainable_state_names(self) -> list[str]:
        names = [f"{n}.{p}" for n, layer in self.layers.items() for p in layer.trainable_names()]
        return names + self.head_state_names()

    def _tensor(self, name: str) -> nn.Parameter:
        return self.model.get_parameter(name)

    def get_state(self, names: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Detached float32 CPU copies of adapter/head tensors (all of them by default).

        On the CPU whatever the model's device: state is what travels (uploads, broadcasts, checkpoints), so
        the server's validation and aggregation see the same tensors in the simulator and over Flower.
        """
        if names is None:
            names = self.adapter_state_names() + self.head_state_names()
        return {n: self._tensor(n).detach().to(device="cpu", dtype=torch.float32, copy=True) for n in names}

    def set_state(self, state: dict[str, Tensor]) -> None:
        """Copy tensors in by name; unknown names are an error (strict, like PEFT)."""
        known = set(self.adapter_state_names()) | set(self.head_state_names())
        unknown = sorted(set(state) - known)
        if unknown:
            raise KeyError(f"unknown adapter state names: {unknown[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                p = self._tensor(n)
                if tuple(p.shape) != tuple(t.shape):
                    raise ValueError(f"{n}: shape {tuple(t.shape)} != expected {tuple(p.shape)}")
                p.copy_(t.to(p.dtype))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(self._tensor(n).shape) for n in self.adapter_state_names() + self.head_state_names()}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for n in self.trainable_state_names():
            yield self._tensor(n)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for n in self.head_state_names():
            yield self._tensor(n)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # --- initialisation ---------------------------------------------------------------------------
    def init_lora(self, seed: int) -> None:
        """Standard LoRA init from a shared seed: A kaiming-uniform (per layer, deterministic), B = 0."""
        with torch.no_grad():
            for i, layer in enumerate(self.layers.values()):
                g = torch.Generator().manual_seed(seed * 100_003 + i)
                layer.lora_A.weight.copy_(lora_a_init(layer.d_in, layer.rank, g))
                layer.lora_B.weight.zero_()

    def init_ravan(self, seed: int, init: BasisInit = "gram-schmidt") -> list[str]:
        """RAVAN's data-free init from a shared seed: frozen bases per layer (generator seeded by the seed and the
        layer's index, so every party draws the same bits), ``H_i = 0``, ``s_i = 1``.

        Returns the layers whose Gram-Schmidt bases did not fit (``heads * r_h > min(d_in, d_out)``) and fell
        back to scaled normal ones (with a warning).
        """
        fallback = []
        with torch.no_grad():
            for i, (name, layer) in enumerate(self.layers.items()):
                if layer.lora_H is None:
                    raise ValueError(f"init_ravan needs adapter mode 'ravan', not {layer.mode!r}")
                g = torch.Generator().manual_seed(seed * 100_003 + i)
                b, a, used = ravan_bases(layer.d_out, layer.d_in, layer.rank, init, g)
                if used != init:
                    fallback.append(name)
                dev = layer.lora_A.weight.device
                layer.lora_B.weight.copy_(b.to(dev))
                layer.lora_A.weight.copy_(a.to(dev))
                for h, _ in layer.ravan_heads():
                    h.weight.zero_()
                layer.reset_scales()
        if fallback:
            warnings.warn(
                f"RAVAN: heads x r_h = {self.rank} exceeds min(d_in, d_out) in {len(fallback)} layer(s) (e.g. {fallback[0]}); "
                "their bases are scaled random normal instead of Gram-Schmidt (lower adapter.rank to keep them orthonormal)",
                UserWarning, stacklevel=2,
            )
        return fallback

    @property
    def active_heads(self) -> tuple[int, ...]:
        """RAVAN: the heads that train (and are uploaded) now; the same in every layer."""
        first = next(iter(self.layers.values()))
        return first.active_heads

    def set_active_heads(self, indices: Iterable[int]) -> None:
        """RAVAN: train only these head indices, in every layer (the others stay frozen)."""
        idx = list(indices)
        for layer in self.layers.values():
            layer.set_active_heads(idx)

    def reset_head_scales(self) -> None:
        """RAVAN: ``s_i = 1`` in every layer."""
        for layer in self.layers.values():
            layer.reset_scales()

    def head_param_names(self, head: int) -> list[str]:
        """RAVAN: the state names of head ``head``'s ``H_i`` in every layer."""
        return [f"{n}.lora_H.{head}.weight" for n in self.layers]

    def set_adapters_enabled(self, on: bool) -> None:
        for layer in self.layers.values():
            layer.adapter_enabled = on

    def residual_state(self) -> dict[str, Tensor]:
        """Dense float32 residuals folded into frozen weights (FedEx-LoRA, FLoRA), by layer name (CPU copies)."""
        return {f"{n}.residual": layer.residual.detach().to(device="cpu", copy=True)
                for n, layer in self.layers.items() if layer.residual is not None}

    def set_residual_state(self, state: dict[str, Tensor]) -> None:
        for n, layer in self.layers.items():
            t = state.get(f"{n}.residual")
            layer.residual = None if t is None else t.detach().to(device=layer.base.weight.device, dtype=torch.float32, copy=True)

    def delta_weights(self) -> dict[str, Tensor]:
        """Per adapted layer, everything added to W0 (residual + adapter product), float32, d_out x d_in."""
        return {n: layer.delta_weight().detach() for n, layer in self.layers.items()}
