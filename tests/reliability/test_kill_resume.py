"""Crash and resume: a ``fedsb run`` subprocess killed with SIGKILL at a random point, then resumed with
``fedsb run --resume``, ends with a byte-identical adapter and identical metrics rows (timing fields aside)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.io.checkpoint import TIMING_FIELDS, load_checkpoint, strip_timing
from tests.reliability.test_checkpoint import resumed_view

ARGS = ["--model", "tiny-bert", "--model.kind", "classification", "--rank", "4", "--rounds", "6", "--steps", "3",
        "--train.batch_size", "8", "--init.samples", "8", "--task.max_test_examples", "32", "--task.max_length", "24",
        "--federation.partition", "iid", "--train.threads", "1", "--no-progress"]
# (method, seed of the kill point, signal): every trial stops the run at a different random moment after
# round 0. SIGKILL gives the process no chance to clean up; SIGTERM is handled like Ctrl-C (exit 130).
TRIALS = [("fed-sb", 1, "SIGKILL"), ("fedex-lora", 2, "SIGKILL"), ("flora", 3, "SIGKILL"), ("fed-sb", 4, "SIGTERM")]


_REFS: dict[str, tuple[Path, float]] = {}


def rows(run_dir: Path, method: str | None = None) -> list[dict]:
    """Metrics rows without timings; with ``method``, without the download sizes a resume changes (FedEx-LoRA and
    FLoRA clients restart empty and catch up on the base residual, as after a Flower resume)."""
    raw = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [resumed_view(r, method) if method else strip_timing(r) for r in raw]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "seed", "sig"), TRIALS)
def test_kill_at_random_point_then_resume_is_bit_identical(method, seed, sig, tmp_path, tmp_path_factory):
    if method not in _REFS:  # one uninterrupted reference run per method
        ref = tmp_path_factory.mktemp("ref") / method
        t0 = time.perf_counter()
        assert main(["run", *ARGS, "--method", method, "--out", str(ref)]) == 0
        _REFS[method] = (ref, time.perf_counter() - t0)
    ref, run_time = _REFS[method]

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedsb.cli", "run", *ARGS, "--method", method, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (killed / "checkpoint.safetensors").exists():  # round 0 done: the run is now resumable
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 0.6 * run_time))  # mostly mid-run
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=120)
    killed_after = load_checkpoint(killed).round
    print(f"{method}: {sig} landed after round {killed_after} of 6 (exit {proc.returncode})")
    if sig == "SIGTERM" and proc.returncode != 0:  # 0: the run had already finished
        err = proc.stderr.read().decode().strip().splitlines()
        assert proc.returncode == 130 and err and "interrupted" in err[-1] and "--resume" in err[-1], err

    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    assert (killed / "adapter_state.safetensors").read_bytes() == (ref / "adapter_state.safetensors").read_bytes()
    assert rows(killed, method) == rows(ref, method)
    assert rows(killed)[-1]["download_bytes_cum"] >= rows(ref)[-1]["download_bytes_cum"]
    assert len(rows(ref)) == 7
    assert all(not any(k in r for k in TIMING_FIELDS) for r in rows(ref))
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")], "temp files left behind"
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["final_metrics"] == json.loads((ref / "summary.json").read_text())["final_metrics"]
