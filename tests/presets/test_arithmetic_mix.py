"""The arithmetic-mix preset: resolves to the documented benchmark, refuses to run without its data, and runs end to
end (tiny random Llama, constructed BIG-bench sub-task folders) split by operation, with per-operation accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.config import resolve
from fedsb.presets import load_presets
from tests.tasks.test_bigbench_subtasks import make_arithmetic


def test_preset_resolves_to_the_benchmark() -> None:
    presets = load_presets()
    assert presets["arithmetic-mix"]["description"]
    cfg = resolve(None, [("preset", "arithmetic-mix")], presets)
    assert (cfg.model.name, cfg.model.kind, cfg.task.chat_template, cfg.task.subtasks) == ("smollm2", "causal-lm", "off", ["2_digit_*"])
    assert (cfg.federation.partition, cfg.federation.split_by, cfg.federation.dirichlet_alpha) == ("dirichlet", "source", 0.5)
    assert cfg.task.path is None and cfg.eval.mode == "likelihood"


def test_preset_without_task_path_says_how_to_pass_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--preset", "arithmetic-mix", "--model.name", "tiny-llama", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--task.path" in err and "\n" not in err
    assert not out.exists()


def test_preset_end_to_end_split_by_operation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_arithmetic(tmp_path, n=24)
    out = tmp_path / "run"
    args = ["run", "--preset", "arithmetic-mix", "--model.name", "tiny-llama", "--task.path", str(d),
            "--federation.partition", "shards", "--federation.shards_per_client", "1", "--clients", "2",
            "--rounds", "1", "--steps", "1", "--eval.every", "1", "--eval.mode", "generate", "--init.samples", "2",
            "--init.batch_size", "2", "--train.batch_size", "2", "--eval.batch_size", "8", "--train.threads", "1",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    final = json.loads((out / "summary.json").read_text())["final_metrics"]
    assert {"accuracy/2_digit_addition", "accuracy/2_digit_multiplication"} <= set(final)
    from fedsb.config import from_dict, load_toml
    from fedsb.core.federation import build_federation

    fed = build_federation(from_dict(load_toml(out / "config.toml")))
    # one shard each, by operation: every client trains on a single operation, and its test share follows it
    assert sorted(len({e.meta["source"] for e in s}) for s in fed.shards) == [1, 1]
    for shard, share in zip(fed.shards, fed.test_shares(), strict=True):
        assert {e.meta["source"] for e in share} <= {e.meta["source"] for e in shard}
