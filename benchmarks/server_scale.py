"""Server aggregation time and peak memory vs the number of clients k, with Mistral-7B-shaped updates.

Synthetic client updates at the paper's ranks (Fed-SB r=200; FedIT, FedEx-LoRA, FLoRA r=32), aggregated
by ``Method.aggregate`` on all k updates held in memory, which is what both engines do (the simulator keeps
the round's uploads for the bounded-influence checks, which need every change's norm; Flower hands the
strategy all replies of a round at once). An earlier version also measured a streaming accumulator
(``stream`` rows in older results): neither engine used it, so it was removed.

To stay within a few minutes and the 24 GB of a shared box, the unit is **one Mistral-7B q_proj layer**
(4096 x 4096) for every method (per-layer scaling; the model has 224 adapted layers of similar size), plus
**Fed-SB on the whole model** (224 layers, 8.96M parameters = 36 MB per update) to show the goal at real
scale. Each (unit, method, k, mode) runs in a fresh process; memory = RSS added during aggregation (peak
sampled every 2 ms minus RSS before the first update; updates of the list mode count, they are what it
holds) and the process peak RSS. Goal: Fed-SB peak memory at k=1000 <= 1.2x of k=10.

    python benchmarks/server_scale.py [--ks 10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fmt,
    machine_info,
    machine_line,
    md_table,
    peak_rss_bytes,
    rss_bytes,
    save_png,
    write_results,
)

RANKS = {"fed-sb": 200, "fedit": 32, "fedex-lora": 32, "flora": 32}
POOL = 4  # distinct random payloads cycled through (values do not change the work)


def layer_shapes(unit: str) -> dict[str, tuple[int, int]]:
    from fedsb.comm.paper import MISTRAL_7B

    if unit == "q_proj":
        return {"layers.0.self_attn.q_proj": (4096, 4096)}
    dims = MISTRAL_7B.module_dims()
    return {f"layers.{b}.{t}": (dims[t].d_out, dims[t].d_in) for b in range(MISTRAL_7B.layers) for t in MISTRAL_7B.targets}


def make_payload(method: str, shapes: dict[str, tuple[int, int]], g) -> dict:
    import torch

    r = RANKS[method]
    out = {}
    for n, (d_out, d_in) in shapes.items():
        if method == "fed-sb":
            out[f"{n}.lora_R.weight"] = torch.randn(r, r, generator=g)
        else:
            out[f"{n}.lora_A.weight"] = torch.randn(r, d_in, generator=g) * 0.01
            out[f"{n}.lora_B.weight"] = torch.randn(d_out, r, generator=g) * 0.01
    return out


def child(unit: str, method: str, k: int, mode: str) -> dict:
    import torch

    from fedsb.methods import METHODS, ClientUpdate, ServerState

    torch.set_num_threads(1)
    shapes = layer_shapes(unit)
    g = torch.Generator().manual_seed(0)
    pool = [make_payload(method, shapes, g) for _ in range(POOL)]
    names = [] if method == "flora" else list(pool[0])
    state = ServerState(round=0, adapter={n: torch.zeros_like(pool[0][n]) for n in names})
    m = METHODS[method](scaling=1.0, weighting="examples", seed=0)

    def arrive(i: int) -> ClientUpdate:  # a fresh copy, as if just received and deserialised
        return ClientUpdate(str(i), {n: t.clone() for n, t in pool[i % POOL].items()}, num_examples=1 + i % 7)

    before = rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    agg_s = 0.0
    updates = [arrive(i) for i in range(k)]
    t0 = time.perf_counter()
    out = m.aggregate(state, updates)
    agg_s = time.perf_counter() - t0
    stop.set()
    th.join()
    out_bytes = sum(t.numel() * t.element_size() for t in {**out.adapter, **out.pending}.values())
    upd_bytes = sum(t.numel() * t.element_size() for t in pool[0].values())
    return {"agg_seconds": agg_s, "increment": peak[0] - before, "peak_rss": peak_rss_bytes(),
            "update_bytes": upd_bytes, "result_bytes": out_bytes}


def skip_reason(unit: str, method: str, k: int, mode: str) -> str | None:
    if unit == "model" and mode == "list" and k >= 1000:
        return "needs k x 36 MB = 36 GB"
    if unit == "q_proj" and method == "fedex-lora" and mode == "list" and k >= 1000:
        return "~1 GFLOP per client; skipped for time"
    return None


def analytic_full_model(method: str, k: int) -> int:
    """Bytes of the server's streamed aggregation state for the whole Mistral-7B (float64 sums)."""
    from fedsb.comm.paper import MISTRAL_7B

    r = RANKS[method]
    dims = MISTRAL_7B.layer_dims()
    lora = sum(r * (d.d_in + d.d_out) for d in dims)
    if method == "fed-sb":
        return 8 * r * r * len(dims)
    if method == "fedit":
        return 8 * lora
    if method == "fedex-lora":
        return 8 * (lora + sum(d.d_in * d.d_out for d in dims))
    return 4 * k * lora  # FLoRA keeps every client's factors


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for unit, method, mode in dict.fromkeys((r["unit"], r["method"], r["mode"]) for r in rows):
        pts = [r for r in rows if (r["unit"], r["method"], r["mode"]) == (unit, method, mode) and r.get("agg_seconds") is not None]
        if not pts:
            continue
        label = f"{method} ({'whole model' if unit.startswith('whole') else 'q_proj'}, {mode})"
        ls = "--"
        ax1.plot([p["k"] for p in pts], [p["agg_seconds"] for p in pts], "o" + ls, label=label)
        ax2.plot([p["k"] for p in pts], [max(p["increment_mb"], 0.01) for p in pts], "o" + ls, label=label)
    for ax, yl in ((ax1, "aggregation seconds"), (ax2, "RSS added during aggregation (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients k")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=6.5)
    fig.suptitle("Server aggregation vs clients, Mistral-7B-shaped updates (1 thread)", fontsize=10)
    fig.tight_layout()
    save_png(fig, "server_scale")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="10,100,1000")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        unit, method, k, mode = args.child.split(",")
        print(json.dumps(child(unit, method, int(k), mode)))
        return 0
    machine = machine_info(1)
    ks = [int(x) for x in args.ks.split(",")]
    combos = [("model", "fed-sb")] + [("q_proj", m) for m in RANKS]
    rows = []
    for unit, method in combos:
        for mode in ("list",):
            for k in ks:
                row = {"unit": "whole model (224 layers)" if unit == "model" else "one q_proj (4096x4096)",
                       "method": method, "rank": RANKS[method], "k": k, "mode": mode,
                       "full_model_stream_state_mb": analytic_full_model(method, k) / 1e6}
                why = skip_reason(unit, method, k, mode)
                if why:
                    rows.append({**row, "note": f"skipped: {why}"})
                    print(f"{unit:<6} {method:<10} {mode:<6} k={k:<5} skipped ({why})", flush=True)
                    continue
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--child", f"{unit},{method},{k},{mode}"],
                                     capture_output=True, text=True, timeout=1200)
                if out.returncode != 0:
                    rows.append({**row, "note": f"failed: {out.stderr.strip().splitlines()[-1][:120]}"})
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({**row, "unit_key": unit, "agg_seconds": res["agg_seconds"],
                             "per_client_ms": 1e3 * res["agg_seconds"] / k,
                             "increment_mb": res["increment"] / 1e6, "peak_rss_mb": res["peak_rss"] / 1e6,
                             "update_mb": res["update_bytes"] / 1e6, "result_mb": res["result_bytes"] / 1e6})
                print(f"{unit:<6} {method:<10} {mode:<6} k={k:<5} {res['agg_seconds']:8.2f} s  "
                      f"+{res['increment'] / 1e6:9.1f} MB  peak {res['peak_rss'] / 1e6:8.0f} MB "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r in rows:
        r["unit_key"] = "model" if r["unit"].startswith("whole") else "q_proj"
    fedsb = {r["k"]: r for r in rows if r["unit_key"] == "model" and "peak_rss_mb" in r}
    big = max((k for k in fedsb if k != 10), default=None)
    goal = None
    if 10 in fedsb and big is not None:
        goal = {"k": big, "peak_ratio": fedsb[big]["peak_rss_mb"] / fedsb[10]["peak_rss_mb"],
                "increment_ratio": fedsb[big]["increment_mb"] / max(fedsb[10]["increment_mb"], 1e-9)}
    cols = [("unit", "unit", str), ("method", "method", str), ("rank", "r", str), ("mode", "mode", str), ("k", "k", str),
            ("update_mb", "update MB", fmt(".2f")), ("agg_seconds", "aggregation s", fmt(".3f")),
            ("per_client_ms", "ms / client", fmt(".2f")), ("increment_mb", "RSS added MB", fmt(".1f")),
            ("peak_rss_mb", "process peak MB", fmt(".0f")), ("result_mb", "result MB", fmt(".1f")),
            ("full_model_stream_state_mb", "whole-model stream state MB (analytic)", fmt(",.0f")), ("note", "note", str)]
    goal_line = ("not measured" if goal is None else
                 f"**Fed-SB (whole Mistral-7B) peak RSS at k={goal['k']} / k=10: {goal['peak_ratio']:.2f}x** "
                 f"(goal <= 1.2x: {'met' if goal['peak_ratio'] <= 1.2 else 'not met'}: the server holds the round's "
                 f"updates); RSS added during aggregation {fedsb[10]['increment_mb']:.0f} MB at k=10 vs "
                 f"{fedsb[goal['k']]['increment_mb']:.0f} MB at k={goal['k']}.")
    md = "\n".join([
        "# Server aggregation vs number of clients (Mistral-7B-shaped updates)",
        "",
        "Synthetic updates at the paper's ranks, aggregated by fedsb's code: `Method.aggregate` over all k updates "
        "held in memory, as both engines do. One fresh "
        "process per row, 1 torch thread. Units: one q_proj layer (all methods; the model has 224 adapted layers "
        "of comparable size) and Fed-SB on the whole model. *RSS added*: peak during aggregation minus RSS before "
        "the first update (includes the k updates held). Last numeric column: the aggregate's own state for "
        "the whole model, analytic (float64 sums; FLoRA keeps k clients' float32 factors, and must broadcast them). "
        "`python benchmarks/server_scale.py`",
        "",
        md_table(rows, cols),
        goal_line,
        "",
        "![server scale](server_scale.png)",
        "",
        machine_line(machine),
        "",
    ])
    write_results("server_scale", rows, md, {"machine": machine, "goal": goal})
    plot([r for r in rows if r.get("agg_seconds") is not None])
    print(md_table(rows, cols))
    print(goal_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
