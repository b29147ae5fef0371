"""Export a trained adapter as a standard PEFT LoRA adapter, or as a merged model (safetensors only).

Fed-SB's ``s B R A`` is a rank-r LoRA with ``A' = A``, ``B' = s B R`` and ``lora_alpha = r`` (PEFT
scaling 1). RAVAN's ``sum_i s_i B_i H_i A_i`` is the same with rank ``heads * r_h``, ``A' = [A_1; ...; A_h]`` and
``B' = B blockdiag(s_i H_i)``. LoRA/FFA adapters export as they are. Methods that fold residuals into the base weight
(FedEx-LoRA, FLoRA) export the whole update per layer, factorised exactly by an SVD at its numerical
rank (PEFT ``rank_pattern``); the merged export is exact for every method.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.model import AdaptedModel
from fedsb.io.rundir import atomic_dir

PEFT_PREFIX = "base_model.model."


def lora_factors(adapted: AdaptedModel) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, int]]:
    """Per layer ``(B', A')`` with ``B' A'`` = the layer's whole update; and ranks differing from ``r``."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    ranks: dict[str, int] = {}
    for name, layer in adapted.layers.items():
        if layer.residual is not None:
            delta = layer.delta_weight().double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            keep = max(1, int((s > s[0] * 1e-7).sum())) if s[0] > 0 else 1
            b, a = (u[:, :keep] * s[:keep]).float(), vh[:keep].float()
            if keep != layer.rank:
                ranks[name] = keep
        elif (core := layer.core_matrix()) is not None:  # Fed-SB's R, RAVAN's blockdiag(s_i H_i)
            a = layer.lora_A.weight.detach().clone()
            b = (layer.scaling * layer.lora_B.weight @ core).detach()
        else:
            a = layer.lora_A.weight.detach().clone()
            b = (layer.scaling * layer.lora_B.weight).detach()
        out[name] = (b.contiguous().cpu(), a.contiguous().cpu())  # files are written from CPU tensors
    return out, ranks


def export_peft(adapted: AdaptedModel, out_dir: str | Path, base_model: str, task_type: str) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` that ``PeftModel.from_pretrained`` loads."""
    out = Path(out_dir)
    factors, ranks = lora_factors(adapted)
    tensors: dict[str, Tensor] = {}
    for name, (b, a) in factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
    for hname, module in adapted.head_modules.items():
        for p, t in module.named_parameters():
            tensors[f"{PEFT_PREFIX}{hname}.{p}"] = t.detach().float().contiguous().cpu()
    fan_in_fan_out = any(isinstance(layer.base, Conv1D) for layer in adapted.layers.values())
    config = LoraConfig(
        task_type=task_type,
        base_model_name_or_path=base_model,
        r=adapted.rank,
        # Every exported B' already carries the scaling, so PEFT's scaling alpha / r must be 1.
        lora_alpha=adapted.rank,
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        target_modules=sorted(adapted.layers),
        modules_to_save=sorted(adapted.head_modules) or None,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        inference_mode=True,
    )
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))  # PEFT's own adapter_config.json
    return out


def merged_model(adapted: AdaptedModel) -> nn.Module:
    """The base model with every layer's update folded into its weight and the adapter layers removed.

    Mutates ``adapted.model`` in place (the adapter wrapper must not be used afterwards).
    """
    model = adapted.model
    with torch.no_grad():
        for name, layer in list(adapted.layers.items()):
            base = layer.base
            delta = layer.delta_weight()
            if isinstance(base, Conv1D):
                base.weight.add_(delta.T.to(base.weight.dtype))
            else:
                base.weight.add_(delta.to(base.weight.dtype))
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, base)
    return model


def export_merged(adapted: AdaptedModel, tokenizer, out_dir: str | Path) -> Path:
    """Save the merged model and tokenizer (safetensors) atomically."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model = merged_model(adapted)
        assert isinstance(model, PreTrainedModel)  # adapters wrap models that fedsb.models.load_model loaded
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out
