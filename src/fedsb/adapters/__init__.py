"""Adapter layers (LoRA-SB, LoRA, FFA-LoRA), injection into Hugging Face models, initialisation and export."""

from fedsb.adapters.layer import ADAPTER_MODES, AdapterLayer
from fedsb.adapters.model import AdaptedModel

__all__ = ["ADAPTER_MODES", "AdaptedModel", "AdapterLayer"]
