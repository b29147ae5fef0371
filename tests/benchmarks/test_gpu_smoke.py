"""benchmarks/gpu_smoke.py: without a GPU it exits 0 and reports every item skipped; its configs are valid."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from fedsb.config import from_dict, merge, validate

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_without_a_gpu_every_item_is_skipped_and_the_exit_status_is_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu_smoke.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # skipped even on a machine with a GPU
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_smoke.py"), "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [item["name"] for item in report["items"]]
    assert {item["status"] for item in report["items"]} == {"skipped"} and report["failed"] == []
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL", "SKIP"))]
    assert len(lines) == len(names) and all(ln.startswith("SKIP") for ln in lines)
    for m in ("fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora"):
        assert f"method/{m}" in names
    for source in ("federated", "federated-sign", "federated-lowrank", "public"):
        assert f"init/{source}" in names
    assert any(n.startswith("dp/sample") for n in names) and any(n.startswith("dp/client") for n in names)


def test_every_item_is_a_valid_cuda_bf16_config() -> None:
    spec = importlib.util.spec_from_file_location("gpu_smoke_bench", BENCH / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(BENCH))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    for name, over in mod.RUNS:
        cfg = validate(from_dict(merge(merge(mod.BASE, {"model": {"device": "cuda"}}), over)))
        assert cfg.model.device == "cuda" and cfg.model.dtype == "bfloat16", name
