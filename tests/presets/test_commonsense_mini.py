"""The commonsense-mini preset: resolves to the documented benchmark, refuses to run without its data, and runs
end to end (tiny random Llama, a constructed suite of data sets) with per-source accuracies in summary.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.config import resolve
from fedsb.presets import load_presets
from tests.tasks.test_suite import make_suite


def test_preset_resolves_to_the_benchmark() -> None:
    presets = load_presets()
    assert presets["commonsense-mini"]["description"]
    cfg = resolve(None, [("preset", "commonsense-mini")], presets)
    assert (cfg.model.name, cfg.model.kind, cfg.task.format, cfg.task.chat_template) == ("smollm2", "causal-lm", "commonsense", "off")
    assert (cfg.federation.clients, cfg.federation.partition, cfg.eval.mode) == (3, "source", "likelihood")
    assert cfg.task.max_train_per_source == 200 and cfg.task.max_test_per_source == 50 and cfg.task.path is None


def test_preset_without_task_path_says_how_to_pass_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--preset", "commonsense-mini", "--model.name", "tiny-llama", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--task.path /path/to/commonsense" in err and "\n" not in err
    assert not out.exists()


def test_preset_end_to_end_on_a_tiny_llama(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = make_suite(tmp_path / "commonsense", n_train=30, n_test=12)
    out = tmp_path / "run"
    args = ["run", "--preset", "commonsense-mini", "--model.name", "tiny-llama", "--task.path", str(suite),
            "--rounds", "1", "--steps", "1", "--eval.every", "1", "--task.max_train_per_source", "12",
            "--task.max_test_per_source", "4", "--init.samples", "2", "--init.batch_size", "2", "--train.batch_size", "2",
            "--eval.batch_size", "8", "--train.threads", "1", "--tracking.backends", "tensorboard", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final_metrics"]
    assert summary["task"] == "commonsense" and summary["num_clients"] == 3
    sources = ("arc", "boolq", "piqa")  # piqa: test only
    assert {f"accuracy/{s}" for s in sources} <= set(final)
    per = [final[f"accuracy/{s}"] for s in sources]
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in per)  # 4 test examples per source
    assert final["accuracy_macro"] == pytest.approx(sum(per) / 3)
    assert final["accuracy"] == pytest.approx(sum(per) / 3)  # equal source sizes: micro = macro here
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1] and all("accuracy/piqa" in r and "accuracy_macro" in r for r in rows)
    # "/" in a metric's name is a TensorBoard tag path: it arrives as the tag, value for value
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("accuracy/piqa")] == [(r["round"], pytest.approx(r["accuracy/piqa"])) for r in rows]
    # the training pool: 12 per training source, split by source over the 3 clients
    from fedsb.config import from_dict, load_toml
    from fedsb.core.federation import build_federation

    cfg = from_dict(load_toml(out / "config.toml"))
    assert cfg.federation.partition == "source" and cfg.task.path == str(suite)
    fed = build_federation(cfg)
    assert Counter(e.meta["source"] for s in fed.shards for e in s) == {"arc": 12, "boolq": 12}
    assert Counter(e.meta["source"] for e in fed.task.test) == {"arc": 4, "boolq": 4, "piqa": 4}
