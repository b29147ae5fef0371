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


def summary_row(variant: str, eps: float, acc: float, std: float = 0.0) -> dict:
    return {"variant": variant, "epsilon": eps, "accuracy_mean": acc, "accuracy_std": std}


def test_verdict_ranks_nothing_when_every_ceiling_sits_at_the_majority_share(dp_scale) -> None:
    inf = float("inf")
    summary = [summary_row("fed-sb", 1.0, 0.51), summary_row("ffa-lora", 1.0, 0.40),
               summary_row("fed-sb", inf, 0.52), summary_row("ffa-lora", inf, 0.51)]
    # 2 standard errors at 1,000 examples and p = 0.51: 0.0316; a ceiling of 0.52 is inside it
    text = dp_scale.verdict(summary, 0.51, 1000)
    assert text.startswith("**No ranking is possible here**") and "fed-sb, 0.5200" in text
    assert "vs FFA-LoRA" not in text  # the DP rows are not compared when nothing learns


def test_verdict_compares_fed_sb_with_ffa_lora_once_a_ceiling_leaves_the_majority(dp_scale) -> None:
    inf = float("inf")
    summary = [summary_row("fed-sb", 1.0, 0.60, 0.01), summary_row("ffa-lora", 1.0, 0.55, 0.02),
               summary_row("fed-sb", inf, 0.70), summary_row("ffa-lora", inf, 0.68)]
    text = dp_scale.verdict(summary, 0.51, 1000)
    assert "leaves the majority share" in text
    assert "Epsilon 1: Fed-SB 0.6000 ± 0.0100 vs FFA-LoRA 0.5500 ± 0.0200." in text
    assert dp_scale.verdict(summary[:2], 0.51, 1000).startswith("No non-private ceiling yet")
