"""GPU smoke test: one short round of every method, every init source and both DP modes on CUDA, bf16 base.

For whoever has a GPU (DESIGN.md 5.3). Each item builds a tiny random model (``tiny-llama`` as a causal LM,
``tiny-bert`` as a classifier for DP, ``tiny-gpt2`` for its Conv1D layers) with a bfloat16 base on
``model.device = cuda``, runs one round of 3 clients with the simulator and checks that the model stayed on
the GPU, that every state tensor is finite and that evaluation ran. ``rng/cuda`` checks that seeded
randomness forks the CUDA generator and leaves the global CUDA RNG as it found it.

Prints one ``PASS`` / ``FAIL`` / ``SKIP`` line per item and writes ``benchmarks/results/gpu_smoke.json``.
Without a CUDA GPU every item is skipped and the exit status is 0; on a GPU it is 1 if any item fails.
``--device cpu`` runs the same items on the CPU (to check the script itself; slow for the bf16 models).

    python benchmarks/gpu_smoke.py                 # ~1 min on a GPU, seconds of start-up
    python benchmarks/gpu_smoke.py --only dp/      # a subset (substring of the item names)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, quiet  # noqa: E402

BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "tiny-llama", "kind": "causal-lm", "dtype": "bfloat16"},
    "adapter": {"rank": 4},
    "init": {"samples": 8, "batch_size": 8},
    "federation": {"clients": 3, "rounds": 1, "partition": "iid"},
    "train": {"local_steps": 2, "batch_size": 4},
    "task": {"max_length": 32, "max_test_examples": 8},
    "eval": {"batch_size": 8},
}
CLASSIFIER = {"model": {"name": "tiny-bert", "kind": "classification", "dtype": "bfloat16"}}
DP = {"init": {"source": "federated"}}

#: (name, config overrides) of every simulator item.
RUNS: list[tuple[str, dict[str, Any]]] = [
    *[(f"method/{m}", {"method": m}) for m in ("fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora")],
    *[(f"init/{name}", {"method": "fed-sb", "init": init}) for name, init in (
        ("federated", {"source": "federated"}),
        ("federated-sign", {"source": "federated-sign"}),
        ("federated-lowrank", {"source": "federated-lowrank"}),
        ("federated-lowrank-4bit", {"source": "federated-lowrank", "lowrank_bits": 4}),
        ("public", {"source": "public"}),
    )],
    ("dp/sample-fed-sb", {"method": "fed-sb", **CLASSIFIER, **DP, "dp": {"mode": "sample", "noise_multiplier": 0.5}}),
    ("dp/sample-fedex-lora", {"method": "fedex-lora", **CLASSIFIER, **DP, "dp": {"mode": "sample", "noise_multiplier": 0.5}}),
    ("dp/client-fed-sb", {"method": "fed-sb", **CLASSIFIER, **DP,
                          "dp": {"mode": "client", "noise_multiplier": 0.5, "max_grad_norm": 1.0}}),
    ("gpt2/fed-sb", {"method": "fed-sb", "model": {"name": "tiny-gpt2", "kind": "causal-lm", "dtype": "bfloat16"}}),
    ("eval/generate", {"method": "fed-sb", "eval": {"mode": "generate"}, "task": {"max_test_examples": 4}}),
]
ITEMS = [name for name, _ in RUNS] + ["rng/cuda"]


def run_item(over: dict[str, Any], device: str) -> dict[str, Any]:
    """One round of the simulator on ``device``; raises AssertionError naming what is wrong."""
    import torch

    from fedsb.config import from_dict, merge, validate
    from fedsb.core.federation import build_federation
    from fedsb.simulation.simulator import Simulator

    cfg = validate(from_dict(merge(merge(BASE, {"model": {"device": device}}), over)))
    fed = build_federation(cfg)
    trainer: dict[str, Any] = {}
    if cfg.dp.mode != "off":
        from fedsb.privacy import make_dp_trainer

        trainer["trainer"] = make_dp_trainer(fed)
    result = Simulator(cfg, fed=fed, progress=False, **trainer).run()
    where = {p.device.type for p in fed.adapted.model.parameters()}
    assert where == {torch.device(device).type}, f"model parameters on {sorted(where)}, expected {device}"
    base = next(iter(fed.adapted.layers.values())).base.weight
    assert base.dtype == torch.bfloat16, f"base weights are {base.dtype}, expected bfloat16"
    tensors = {**result.state.adapter, **result.state.pending, **fed.adapted.residual_state()}
    bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
    assert not bad, f"non-finite state: {bad[:3]}"
    last = result.rows[-1]
    assert last["round"] == 1 and not last.get("skipped"), f"round 1 did not aggregate: {last}"
    metrics = {k: last[k] for k in ("accuracy", "loss", "train_loss") if isinstance(last.get(k), (int, float))}
    assert all(math.isfinite(v) for v in metrics.values()) and "accuracy" in metrics, f"evaluation: {metrics}"
    return metrics


def check_cuda_rng(device: str) -> dict[str, Any]:
    """Seeded randomness reproduces on the device and restores every global generator it touched."""
    import torch

    from fedsb.adapters.lora_sb_init import truncated_svd
    from fedsb.devices import seeded_rng

    get = (lambda: torch.cuda.get_rng_state(torch.device(device))) if device.startswith("cuda") else torch.get_rng_state
    before = get()
    with seeded_rng(3, device):
        a = torch.rand(8, device=device)
    with seeded_rng(3, device):
        b = torch.rand(8, device=device)
    assert torch.equal(a, b), "the same seed gave different draws"
    m = torch.randn(64, 48, device=device)
    after_draw = get()
    u1, _, _ = truncated_svd(m, 4, "lowrank", oversample=4, seed=1)
    u2, _, _ = truncated_svd(m, 4, "lowrank", oversample=4, seed=1)
    assert torch.equal(u1, u2), "the seeded SVD sketch is not reproducible"
    assert torch.equal(get(), after_draw), "the SVD sketch changed the global RNG of the device"
    assert not torch.equal(before, after_draw), "the unseeded draw did not advance the global RNG (check is void)"
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default; every item skipped without a GPU) or cpu")
    ap.add_argument("--only", default="", help="run only items whose name contains this")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_smoke.json")
    args = ap.parse_args(argv)
    import torch

    quiet()
    skip = None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        skip = "no CUDA GPU visible"
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if skip is None and args.device.startswith("cuda") else None
    checks: dict[str, Callable[[], dict[str, Any]]] = {name: (lambda over=over: run_item(over, args.device)) for name, over in RUNS}
    checks["rng/cuda"] = lambda: check_cuda_rng(args.device)
    results = []
    for name in ITEMS:
        if args.only not in name:
            continue
        item: dict[str, Any] = {"name": name}
        if skip:
            item.update(status="skipped", reason=skip)
            print(f"SKIP {name}: {skip}", flush=True)
        else:
            t0 = time.perf_counter()
            try:
                item.update(status="pass", metrics=checks[name]())
            except Exception as e:  # one failing item must not hide the others
                item.update(status="fail", error=f"{type(e).__name__}: {e}"[:2000],
                            traceback=traceback.format_exc(limit=-6)[-4000:])
            item["seconds"] = round(time.perf_counter() - t0, 2)
            if args.device.startswith("cuda"):
                item["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                torch.cuda.reset_peak_memory_stats()
            line = f"{item['status'].upper()} {name} ({item['seconds']} s)"
            print(line + (f": {item['error'].splitlines()[0]}" if item["status"] == "fail" else ""), flush=True)
        results.append(item)
    failed = [r["name"] for r in results if r["status"] == "fail"]
    report = {"device": args.device, "gpu": gpu, "skipped_because": skip, "failed": failed, "items": results,
              "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    n = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "skipped")}
    print(f"{n['pass']} passed, {n['fail']} failed, {n['skipped']} skipped; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
