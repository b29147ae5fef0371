"""Ctrl-C: the current round is abandoned, the run directory stays resumable, the exit code is 130 with a
one-line message; resuming gives the same adapter bytes and metrics rows as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fedsb.core.client
from fedsb.cli import main
from fedsb.io.checkpoint import load_checkpoint, strip_timing

ARGS = ["run", "--model", "tiny-bert", "--rank", "4", "--rounds", "3", "--steps", "2", "--init.samples", "4",
        "--task.max_test_examples", "16", "--task.max_length", "16", "--train.threads", "1", "--no-progress"]


def rows(d: Path) -> list[dict]:
    return [strip_timing(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines() if line]


@pytest.mark.parametrize("method", ["fed-sb", "fedex-lora"])
def test_ctrl_c_mid_round_then_resume(method, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    assert main([*ARGS, "--method", method, "--out", str(ref)]) == 0

    real = fedsb.core.client.local_train
    calls = {"n": 0}

    def interrupted_train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # round 2, second client (3 clients per round)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fedsb.core.client, "local_train", interrupted_train)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main([*ARGS, "--method", method, "--out", str(run_dir)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted in round 2" in err[0] and f"--resume {run_dir}" in err[0], err
    assert load_checkpoint(run_dir).round == 1
    assert not (run_dir / "summary.json").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(fedsb.core.client, "local_train", real)

    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "adapter_state.safetensors").read_bytes() == (ref / "adapter_state.safetensors").read_bytes()
    assert rows(run_dir) == rows(ref)
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0  # a finished run: nothing to do
    assert "already complete" in capsys.readouterr().out
