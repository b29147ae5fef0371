"""PEFT export: PeftModel.from_pretrained(base, exported) gives our logits; merged export too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedsb.io.export import export_merged, export_peft
from fedsb.models.load import load_model
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


@pytest.mark.parametrize(
    ("model", "method"),
    [("tiny-bert", "fed-sb"), ("tiny-llama", "fed-sb"), ("tiny-gpt2", "fed-sb"), ("tiny-bert", "fedex-lora"),
     ("tiny-bert", "flora"), ("tiny-gpt2", "ffa-lora"), ("tiny-bert", "ravan"), ("tiny-gpt2", "ravan"),
     ("tiny-bert", "fedsvd"), ("tiny-gpt2", "rolora")],
)
def test_peft_adapter_reproduces_our_logits(model: str, method: str, tmp_path: Path) -> None:
    fed = tiny_federation(model, method, federation={"rounds": 2})
    Simulator(fed.cfg, fed=fed, progress=False).run()
    batch = fed.objective.collate(fed.task.test[:6])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fed.adapted.eval()
    with torch.no_grad():
        ours = fed.adapted.model(**inputs).logits
    out = export_peft(fed.adapted, tmp_path / "adapter", model, "SEQ_CLS")
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    base = load_model(model, "classification", len(fed.task.labels), seed=0).model  # same seed: same base weights
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    merged = export_merged(fed.adapted, None, tmp_path / "merged")
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(**inputs).logits, ours, rtol=1e-4, atol=1e-5)
    assert not list(merged.glob("*.bin")), "merged model must be safetensors only"
