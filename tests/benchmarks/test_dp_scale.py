"""benchmarks/dp_scale.py builds valid fedsb configs from public keys only (no run: the benchmark takes ~2 h)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def dp_scale():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("dp_scale_bench", BENCH / "dp_scale.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


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
