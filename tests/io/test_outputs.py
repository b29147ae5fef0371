"""The final files of a personalised run: each client's own model as a PEFT adapter that reproduces it."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from fedsb.io.outputs import save_final
from fedsb.io.rundir import RunDir
from fedsb.models.load import load_model
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


def test_fedsa_lora_writes_one_adapter_per_client_that_reproduces_its_model(tmp_path: Path) -> None:
    fed = tiny_federation("tiny-bert", "fedsa-lora", federation={"rounds": 2})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.run()
    assert sorted(sim.local_state) == [0, 1, 2]
    run = RunDir.create(tmp_path / "run")
    save_final(run, fed, sim.rows, {"method": "fedsa-lora"}, clients=sim.local_state)
    batch = fed.objective.collate(fed.task.test[:6])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    shared = fed.adapted.get_state()
    outs = []
    for c, own in sorted(sim.local_state.items()):
        fed.adapted.set_state({**shared, **own})
        fed.adapted.eval()
        with torch.no_grad():
            ours = fed.adapted.model(**inputs).logits
        base = load_model("tiny-bert", "classification", len(fed.task.labels), seed=0).model
        peft_model = PeftModel.from_pretrained(base, str(run.path / f"adapter-client-{c}")).eval()
        with torch.no_grad():
            torch.testing.assert_close(peft_model(**inputs).logits, ours, rtol=1e-5, atol=1e-5)
        outs.append(ours)
    assert not torch.allclose(outs[0], outs[1])  # the clients' models differ: each file is its own
