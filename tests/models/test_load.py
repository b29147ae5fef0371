"""Default targets and heads per architecture family (fedsb.models.load), on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DistilBertConfig,
    GemmaConfig,
    MistralConfig,
    PhiConfig,
    Qwen2Config,
    RobertaConfig,
)

from fedsb.adapters.model import AdaptedModel
from fedsb.models.load import CALIBRATED_TARGETS, default_head, default_targets

ENC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48, "vocab_size": 100}
DEC = {**ENC, "num_key_value_heads": 2, "max_position_embeddings": 64}

ENCODERS = {
    "roberta": (RobertaConfig(**ENC, max_position_embeddings=64), ["query", "value"], ["classifier"]),
    "deberta-v2": (DebertaV2Config(**ENC, max_position_embeddings=64), ["query_proj", "value_proj"], ["pooler", "classifier"]),
    "distilbert": (
        DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=48, max_position_embeddings=64),
        ["k_lin", "lin1", "lin2", "out_lin", "q_lin", "v_lin"],  # PEFT has no mapping: every backbone linear layer
        ["pre_classifier", "classifier"],
    ),
}
DECODERS = {
    "qwen2": Qwen2Config(**DEC),
    "mistral": MistralConfig(**DEC, head_dim=16),
    "gemma": GemmaConfig(**DEC, head_dim=16),
    "phi": PhiConfig(**{k: v for k, v in DEC.items() if k != "num_key_value_heads"}),
}


@pytest.mark.parametrize("family", list(ENCODERS))
def test_encoder_defaults_adapt_and_train(family: str) -> None:
    config, targets, head = ENCODERS[family]
    config.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    assert model.config.model_type == family
    assert default_head(model) == head
    assert default_targets(model, family, "classification", head) == targets
    adapted = AdaptedModel(model, targets, "lora-sb", 4, head=head)
    assert adapted.layers and all(any(n.endswith(t) for t in targets) for n in adapted.layers)
    out = adapted.model(input_ids=torch.randint(3, 100, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    out.logits.sum().backward()
    assert any(p.grad is not None for p in adapted.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", list(DECODERS))
def test_decoder_defaults_adapt_every_projection(family: str) -> None:
    config = DECODERS[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    targets = default_targets(model, model.config.model_type, "causal-lm", [])
    if family in CALIBRATED_TARGETS:
        assert targets == CALIBRATED_TARGETS[family]
    assert "lm_head" not in targets and len(targets) >= 4  # attention and MLP projections, never the output layer
    adapted = AdaptedModel(model, targets, "lora", 4)
    assert len(adapted.layers) >= 4 * config.num_hidden_layers
    out = adapted.model(input_ids=torch.randint(3, 100, (2, 7)))
    assert torch.isfinite(out.logits).all()
    # A classifier on the same backbone gets its score layer as head.
    cls = AutoModelForSequenceClassification.from_config(config)
    assert default_head(cls) == ["score"]


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_calibrated_families_keep_their_targets(family: str) -> None:
    from fedsb.models.load import load_model

    loaded = load_model(f"tiny-{family}" if family != "gpt2" else "tiny-gpt2", "classification", 3)
    assert loaded.targets == CALIBRATED_TARGETS[family]
    assert loaded.head == (["classifier"] if family == "bert" else ["score"])
