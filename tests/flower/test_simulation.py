"""``flwr.simulation.run_simulation`` (Ray, one actor per CPU): same final state as the in-process simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsb.flower.simulate import backend_config, simulate
from fedsb.flower.strategy import FlowerOptions
from fedsb.simulation import Simulator
from tests.helpers import tiny_config

# Client-side training is seeded like the simulator's: batches by (seed, round, client) inside
# Federation.client_batches. Dropout draws from each process's global RNG, so bit-equality needs a model
# without dropout (the tiny test models); MiniLM's dropout makes Flower and simulator runs differ slightly.


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fed-sb"])  # every method is compared over the in-process grid (test_strategy.py)
def test_run_simulation_equals_the_simulator(method: str, tmp_path: Path) -> None:
    over = {"federation": {"clients": 3, "rounds": 2}}
    strategy = simulate(tiny_config(method=method, out=str(tmp_path / "flower"), **over), FlowerOptions(),
                        backend=backend_config(1.0, total_cpus=2))
    sim = Simulator(tiny_config(method=method, **over), progress=False).run()
    assert strategy.state.round == 2
    for k, v in sim.state.adapter.items():
        assert torch.allclose(strategy.state.adapter[k], v, atol=1e-6, rtol=0), k
    rows = (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and '"wire_upload_payload_bytes"' in rows[-1]
    assert (tmp_path / "flower" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "flower" / "adapter" / "adapter_config.json").is_file()
