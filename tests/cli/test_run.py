"""`fedsb run`, `fedsb methods`, `fedsb export` end to end on a tiny model, and the default quickstart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedsb.cli import main
from fedsb.methods import METHODS

TINY = ["--model", "tiny-bert", "--rounds", "2", "--steps", "2", "--rank", "4", "--train.batch_size", "4",
        "--init.samples", "8", "--task.max_test_examples", "16", "--train.threads", "1", "--no-progress"]
SUMMARY_KEYS = {"method", "rank", "num_clients", "rounds", "final_metrics", "comm", "wall_seconds"}
COMM_KEYS = {"upload_params_per_client_round", "download_params_per_client_round", "upload_bytes_total",
             "download_bytes_total", "one_time_bytes"}


def test_run_writes_the_documented_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "results in" in printed
    for name in ("config.toml", "metrics.jsonl", "summary.json", "curves.png", "adapter_state.safetensors",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and COMM_KEYS <= set(summary["comm"])
    assert 0.0 <= summary["final_metrics"]["accuracy"] <= 1.0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all("accuracy" in r for r in rows)

    # The resolved config reproduces the run bit for bit.
    again = tmp_path / "again"
    assert main(["run", str(out / "config.toml"), "--out", str(again), "--no-progress"]) == 0
    a = load_file(str(out / "adapter_state.safetensors"))
    b = load_file(str(again / "adapter_state.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # Export a merged model.
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merged", str(merged), "--peft", str(tmp_path / "peft")]) == 0
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_run_refuses_to_overwrite_and_leaves_the_directory_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["run", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_methods_lists_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]  # option lines are indented
    assert names == list(METHODS)
    assert names[:5] == ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora"] and "fedsvd" in names


@pytest.mark.long
@pytest.mark.slow
def test_default_quickstart_reaches_080(tmp_path: Path) -> None:
    """`fedsb run` with no arguments: the embedded MiniLM intent-recognition job (README's first command)."""
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "-m", "fedsb.cli", "run", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    print(f"quickstart: accuracy {summary['final_metrics']['accuracy']:.4f} in {summary['wall_seconds']:.1f} s")
    assert summary["final_metrics"]["accuracy"] >= 0.80
    assert summary["method"] == "fed-sb"


def test_methods_lists_each_methods_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "method_options.heads = 4" in out and "method_options.svd_period = 1" in out


@pytest.mark.parametrize("method", ["fedsvd", "rolora", "fedsa-lora"])
def test_fedsb_run_with_sample_level_dp(method: str, tmp_path: Path) -> None:
    """The 2025 methods from the command line under sample-level DP (RAVAN's: tests/methods/test_ravan.py):
    every round evaluated, epsilon spent and within budget, the PEFT adapter(s) written."""
    out = tmp_path / "run"
    args = ["run", "--method", method, "--model", "tiny-bert", "--rounds", "3", "--steps", "2", "--rank", "4",
            "--train.batch_size", "4", "--task.max_test_examples", "16", "--train.threads", "1", "--no-progress",
            "--dp.mode", "sample", "--dp.epsilon", "3", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all("accuracy" in r for r in rows) and 0 < rows[1]["epsilon"] < rows[-1]["epsilon"] <= 3.0
    assert json.loads((out / "summary.json").read_text())["method"] == method
    assert (out / "adapter" / "adapter_config.json").is_file()
    clients = sorted(p.name for p in out.glob("adapter-client-*"))
    assert clients == (["adapter-client-0", "adapter-client-1", "adapter-client-2"] if method == "fedsa-lora" else [])
    if method == "fedsa-lora":
        assert all("personal_accuracy" in r for r in rows[1:])
