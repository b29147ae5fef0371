"""benchmarks/dp_scale.py builds valid fedsb configs from public keys only (no run: the benchmark takes ~2 h)."""

from __future__ import annotations

import pytest

from tests.benchmarks.loader import load_benchmark


@pytest.fixture(scope="module")
def dp_scale():
    yield from load_benchmark("dp_scale")


@pytest.mark.parametrize("sched_name", ["SCHEDULE", "QUICK"])
def test_every_run_of_the_plan_is_a_valid_config(dp_scale, sched_name: str) -> None:
    sched = getattr(dp_scale, sched_name)
    for variant, spec in dp_scale.VARIANTS.items():
        for eps in (1.0, 3.0, None):
            cfg = dp_scale.build_config(variant, eps, 1, sched, "task.json")  # validate() raises on unknown keys
            assert cfg.method == spec["method"] and cfg.seed == 1
            assert cfg.adapter.rank == (dp_scale.FEDSB_RANK if spec["method"] == "fed-sb" else dp_scale.LORA_RANK)
            assert (cfg.dp.mode, cfg.dp.epsilon) == (("off", None) if eps is None else ("sample", eps))
            assert cfg.dp.delta is None and cfg.train.lr is None  # fedsb's defaults, nothing tuned
            assert cfg.task.path == "task.json" and cfg.task.max_test_examples == sched["test_size"]
            assert (cfg.federation.rounds, cfg.train.local_steps, cfg.train.batch_size) == (
                sched["rounds"], sched["steps"], sched["batch"])
            assert (cfg.init.source == "public") == (variant == "fed-sb-public")
