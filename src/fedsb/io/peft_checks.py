"""Checks of a PEFT LoRA adapter directory against the base model it is loaded into, before PEFT sees it.

PEFT reports a missing weight file as a hub-id validation error and a shape mismatch as a multi-line
``RuntimeError``; these checks turn every such problem into one :class:`~fedsb.errors.FedsbError` line that
names the file and the fix. Only safetensors weights are accepted (``adapter_model.bin`` is a pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from transformers.pytorch_utils import Conv1D

from fedsb.adapters.layer import base_shape
from fedsb.errors import FedsbError
from fedsb.io.state_io import load_tensors

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PREFIX = "base_model.model."


def read_adapter_config(adapter_dir: str | Path) -> dict:
    p = Path(adapter_dir) / CONFIG
    if not p.is_file():
        raise FedsbError(f"{p} is missing; a PEFT adapter directory needs {CONFIG} and {WEIGHTS}")
    try:
        conf = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FedsbError(f"{p} is not valid JSON ({e}); re-export the adapter") from None
    if not isinstance(conf, dict) or conf.get("peft_type", "LORA") != "LORA":
        raise FedsbError(f"{p} is not a LoRA adapter config (peft_type {conf.get('peft_type') if isinstance(conf, dict) else None!r})")
    return conf


def check_peft_adapter(adapter_dir: str | Path, model: nn.Module) -> dict:
    """Raise a one-line :class:`FedsbError` unless ``adapter_dir`` is a complete LoRA adapter that fits ``model``.

    Returns the adapter config. Checks: config and safetensors weights present (a ``.bin`` pickle is refused),
    weights readable and finite, every ``lora_A``/``lora_B`` names an existing linear layer of ``model`` with
    matching ``d_in``/``d_out`` and one rank per layer, and every other tensor matches a model parameter.
    """
    d = Path(adapter_dir)
    if not d.is_dir():
        raise FedsbError(f"adapter directory {str(d)!r} not found; pass a directory holding {CONFIG} and {WEIGHTS}")
    conf = read_adapter_config(d)
    weights = d / WEIGHTS
    if not weights.is_file():
        if (d / "adapter_model.bin").is_file():
            raise FedsbError(f"{d} holds adapter_model.bin (a pickle, never loaded); save the adapter with safetensors")
        raise FedsbError(f"{weights} is missing; the adapter directory is incomplete, re-export it")
    tensors = load_tensors(weights)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    ranks: dict[str, int] = {}
    for key, t in tensors.items():
        name = key.removeprefix(PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module_name = name.split(marker)[0]
                module = modules.get(module_name)
                if not isinstance(module, (nn.Linear, Conv1D)):
                    raise FedsbError(f"{weights}: {module_name!r} is not a linear layer of the base model; "
                                     "the adapter was trained on another model")
                d_out, d_in = base_shape(module)
                if t.dim() != 2:
                    raise FedsbError(f"{weights}: {key} has shape {tuple(t.shape)}, expected a matrix")
                rank, want = (t.shape[0], (t.shape[0], d_in)) if part == "lora_A" else (t.shape[1], (d_out, t.shape[1]))
                if tuple(t.shape) != want:
                    raise FedsbError(f"{weights}: {key} has shape {tuple(t.shape)} but the base model's {module_name} "
                                     f"needs {want}; the adapter was trained on another model")
                if ranks.setdefault(module_name, rank) != rank:
                    raise FedsbError(f"{weights}: lora_A and lora_B of {module_name} disagree on the rank; the file is corrupt")
                break
        else:
            p = params.get(name)  # a head saved as modules_to_save
            if p is not None and tuple(p.shape) != tuple(t.shape):
                raise FedsbError(f"{weights}: {key} has shape {tuple(t.shape)} but the base model's parameter has "
                                 f"{tuple(p.shape)}; the adapter was trained on another model")
    if not ranks:
        raise FedsbError(f"{weights} holds no lora_A/lora_B tensors; it is not a LoRA adapter")
    return conf
