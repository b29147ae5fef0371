"""``AdaptedModel.unload``: the bare model comes back unchanged, ready for another adapter set-up."""

from __future__ import annotations

import torch
from torch import nn

from fedsb.adapters.layer import AdapterLayer
from fedsb.adapters.model import AdaptedModel
from fedsb.models.load import load_model


def test_unload_restores_modules_and_weights() -> None:
    model = load_model("tiny-bert", "classification", num_labels=3).model
    before = {n: t.clone() for n, t in model.state_dict().items()}
    x = torch.randint(0, 100, (2, 7))
    ref = model(input_ids=x).logits
    adapted = AdaptedModel(model, ["query", "value"], "lora", 4, head=["classifier"])
    adapted.init_lora(0)
    with torch.no_grad():
        for layer in adapted.layers.values():
            layer.lora_B.weight.normal_()
            layer.add_residual(torch.ones(layer.d_out, layer.d_in))
    assert not torch.allclose(adapted(input_ids=x).logits, ref)
    bare = adapted.unload()
    assert bare is model and adapted.layers == {}
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, nn.Linear)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    torch.testing.assert_close(model(input_ids=x).logits, ref)
    again = AdaptedModel(model, ["query"], "lora-sb", 2, head=["classifier"])  # re-injection works
    assert len(again.layers) == 2
