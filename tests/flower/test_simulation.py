"""``flwr.simulation.run_simulation`` (Ray, one actor per CPU): same final state as the in-process simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsb.flower.simulate import backend_config, simulate
from fedsb.flower.strategy import FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config

# Client-side training is seeded like the simulator's: batches by (seed, round, client) inside
# Federation.client_batches, and dropout from the global RNG forked and seeded per (seed, round, client)
# (fedsb.devices.client_rng; a dropout model over the in-process grid: tests/flower/test_local_rng.py).


@pytest.mark.slow
# Every method is compared over the in-process grid (test_strategy.py); here Fed-SB, and FedSA-LoRA, whose nodes
# (Ray workers) keep their personal tensors on disk under the run directory and export their own models.
@pytest.mark.parametrize("method", ["fed-sb", "fedsa-lora"])
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
    if method == "fedsa-lora":
        assert strategy.rows[-1]["personal_accuracy"] == sim.rows[-1]["personal_accuracy"]
        stores = sorted((tmp_path / "flower" / "node-state").glob("*/partition-*"))
        assert [p.name for p in stores] == ["partition-0", "partition-1", "partition-2"]
        assert all((p / "adapter" / "adapter_config.json").is_file() and list(p.glob("round-*")) for p in stores)


def test_backend_config_joins_a_ray_cluster_without_local_resources() -> None:
    from fedsb.flower.simulate import backend_config

    local = backend_config(1.0, total_cpus=2)
    assert local["init_args"]["num_cpus"] == 2 and local["client_resources"]["num_cpus"] == 1.0
    cluster = backend_config(2.0, ray_address="127.0.0.1:6379")
    # Ray refuses num_cpus/num_gpus when connecting to an existing cluster: only the address is passed.
    assert cluster["init_args"] == {"address": "127.0.0.1:6379"}
    assert cluster["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}
