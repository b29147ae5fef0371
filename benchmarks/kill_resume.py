"""Kill-and-resume trials: ``fedsb run`` subprocesses stopped by SIGKILL (or SIGTERM) at random moments, then
``fedsb run --resume``; counts the trials whose final adapter bytes and metrics rows (timing aside) equal an
uninterrupted run's.

    python benchmarks/kill_resume.py [--trials 8] [--seed 0]

Writes ``benchmarks/results/kill_resume.{md,csv,json}``. Tiny random model (tiny-bert), so it measures the
checkpoint logic, not training.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, machine_line, md_table, write_results  # type: ignore[import-not-found]

ARGS = ["--model", "tiny-bert", "--model.kind", "classification", "--rank", "4", "--rounds", "6", "--steps", "3",
        "--train.batch_size", "8", "--init.samples", "8", "--task.max_test_examples", "32", "--task.max_length", "24",
        "--federation.partition", "iid", "--train.threads", "1", "--no-progress"]
METHODS = ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora"]


def fedsb(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedsb.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def rows(d: Path) -> list[dict]:
    from fedsb.io.checkpoint import strip_timing

    return [strip_timing(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines() if line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from fedsb.io.checkpoint import load_checkpoint

    rng = random.Random(a.seed)
    meta = {"machine": machine_info(1), "args": ARGS, "trials": a.trials, "seed": a.seed}
    out_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        refs: dict[str, tuple[Path, float]] = {}
        for i in range(a.trials):
            method = METHODS[i % len(METHODS)]
            sig = "SIGTERM" if i % 4 == 3 else "SIGKILL"
            if method not in refs:
                ref = Path(tmp) / f"ref-{method}"
                t0 = time.perf_counter()
                p = fedsb("run", *ARGS, "--method", method, "--out", str(ref))
                assert p.wait() == 0, p.stderr.read().decode()
                refs[method] = (ref, time.perf_counter() - t0)
            ref, run_time = refs[method]
            d = Path(tmp) / f"trial-{i}"
            p = fedsb("run", *ARGS, "--method", method, "--out", str(d))
            t0 = time.perf_counter()
            while not (d / "checkpoint.safetensors").exists() and p.poll() is None:
                time.sleep(0.01)
            t_ckpt = time.perf_counter() - t0
            # the run's own time after round 0 is roughly the reference's minus its start-up (the first checkpoint)
            delay = rng.uniform(0, max(0.2, run_time - t_ckpt))
            time.sleep(delay)
            p.send_signal(getattr(signal, sig))
            code = p.wait()
            after = load_checkpoint(d).round
            r = subprocess.run([sys.executable, "-m", "fedsb.cli", "run", "--resume", str(d), "--no-progress"],
                               capture_output=True, text=True)
            same_adapter = (d / "adapter_state.safetensors").read_bytes() == (ref / "adapter_state.safetensors").read_bytes()
            same_rows = rows(d) == rows(ref)
            row = {"trial": i, "method": method, "signal": sig, "delay_s": round(delay, 2), "exit_code": code,
                   "checkpointed_round": after, "resume_exit": r.returncode, "adapter_identical": same_adapter,
                   "metrics_identical": same_rows}
            out_rows.append(row)
            print(row, flush=True)
    ok = sum(r["adapter_identical"] and r["metrics_identical"] and r["resume_exit"] == 0 for r in out_rows)
    mid = sum(r["checkpointed_round"] < 6 for r in out_rows)
    cols = [(k, k, str) for k in out_rows[0]]
    md = (f"# Kill and resume\n\n{ok} of {len(out_rows)} trials ended byte-identical (adapter) with identical metrics rows; "
          f"{mid} were stopped mid-run (before the last round's checkpoint), the rest while writing final outputs.\n\n"
          + md_table(out_rows, cols) + "\n" + machine_line(meta["machine"]) + "\n")
    write_results("kill_resume", out_rows, md, {**meta, "identical": ok, "mid_run": mid})
    print(f"{ok}/{len(out_rows)} identical ({mid} stopped mid-run)")


if __name__ == "__main__":
    main()
