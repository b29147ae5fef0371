"""The in-process simulator with 10, 100 and 1000 virtual clients: peak RSS and time per round.

Fed-SB r=16 on the embedded model (all-MiniLM-L6-v2, intent recognition). The task has ~555 training
examples, so the training set is repeated 4x (the same examples, ~2,200 in all) for every k, split IID;
every client takes part in every round with 1 local step of batch 2 (so a round's work grows with k: we
report seconds per round and per client update). The LoRA-SB init uses ``init.source = public``: the dense
``federated`` init would hold k gradient messages of 14 MB each in memory (see the note it prints), which
is the init's cost, not the simulator's. Each k runs in a fresh process; memory = process peak RSS
(``ru_maxrss``) and RSS above the loaded model. Goal: 1000 clients <= 1.3x the peak memory of 10.

    python benchmarks/client_scale.py [--ks 10,100,1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fmt,
    machine_info,
    machine_line,
    md_table,
    peak_rss_bytes,
    quiet,
    rss_bytes,
    save_png,
    write_results,
)

REPEAT = 4


def child(k: int, rounds: int, threads: int) -> dict:
    import torch

    from fedsb.config import from_dict, validate
    from fedsb.core.federation import assemble_federation, model_kind
    from fedsb.models.load import load_model
    from fedsb.simulation.simulator import Simulator
    from fedsb.tasks import load_task

    quiet()
    torch.set_num_threads(threads)
    cfg = validate(from_dict({
        "method": "fed-sb", "seed": 0, "adapter": {"rank": 16},
        "init": {"source": "public", "samples": 32},
        "federation": {"clients": k, "rounds": rounds, "partition": "iid"},
        "train": {"local_steps": 1, "batch_size": 2, "threads": threads},
        "task": {"max_test_examples": 64},
        "eval": {"every": rounds},
    }))
    kind = model_kind(cfg)
    task = load_task(cfg.task, kind, cfg.seed)  # type: ignore[arg-type]
    task.train = task.train * REPEAT
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model.name, kind, max(2, len(task.labels)), cfg.model.dtype, cfg.seed)  # type: ignore[arg-type]
    after_load = rss_bytes()
    fed = assemble_federation(cfg, loaded, task)
    t0 = time.perf_counter()
    result = Simulator(cfg, fed=fed, progress=False).run()
    wall = time.perf_counter() - t0
    rounds_s = [r["seconds"] for r in result.rows if r["round"] >= 1]
    update_bytes = result.rows[-1].get("upload_bytes_per_client", 0)
    return {"k": k, "examples": len(task.train), "min_shard": min(len(s) for s in fed.shards),
            "round_seconds": rounds_s, "init_seconds": result.summary["init_seconds"], "wall": wall,
            "after_load_rss": after_load, "peak_rss": peak_rss_bytes(), "update_bytes": update_bytes,
            "accuracy": result.summary["final_metrics"].get("accuracy"),
            "dense_init_message_bytes": sum(4 * layer.d_in * layer.d_out for layer in fed.adapted.layers.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="10,100,1000")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.threads)))
        return 0
    machine = machine_info(args.threads)
    rows = []
    for k in [int(x) for x in args.ks.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(k), "--rounds", str(args.rounds), "--threads",
                              str(args.threads)], capture_output=True, text=True, timeout=3000)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        last = res["round_seconds"][-1]
        rows.append({"clients": k, "train_examples": res["examples"], "smallest_shard": res["min_shard"],
                     "seconds_per_round": last, "ms_per_client_update": 1e3 * last / k,
                     "all_round_seconds": res["round_seconds"], "peak_rss_mb": res["peak_rss"] / 1e6,
                     "above_model_mb": (res["peak_rss"] - res["after_load_rss"]) / 1e6,
                     "update_kb": res["update_bytes"] / 1e3, "accuracy": res["accuracy"],
                     "dense_init_hold_mb": k * res["dense_init_message_bytes"] / 1e6})
        print(f"k={k:<5} {last:7.1f} s/round ({1e3 * last / k:.1f} ms/client)  peak RSS {res['peak_rss'] / 1e6:7.0f} MB  "
              f"(+{(res['peak_rss'] - res['after_load_rss']) / 1e6:.0f} MB above the loaded model)", flush=True)
    by = {r["clients"]: r for r in rows}
    ratio = by[1000]["peak_rss_mb"] / by[10]["peak_rss_mb"] if 10 in by and 1000 in by else None
    cols = [("clients", "clients", str), ("train_examples", "train examples", str), ("smallest_shard", "min shard", str),
            ("seconds_per_round", "s / round (last)", fmt(".1f")), ("ms_per_client_update", "ms / client update", fmt(".1f")),
            ("peak_rss_mb", "peak RSS MB", fmt(".0f")), ("above_model_mb", "above loaded model MB", fmt(".0f")),
            ("update_kb", "upload / client KB", fmt(".1f")),
            ("dense_init_hold_mb", "dense federated init would hold MB", fmt(",.0f"))]
    goal = ("not measured" if ratio is None else
            f"**peak RSS 1000 / 10 clients: {ratio:.2f}x** (goal <= 1.3x: {'met' if ratio <= 1.3 else 'not met'}).")
    md = "\n".join([
        "# Simulator scale: 10 / 100 / 1000 virtual clients",
        "",
        f"Fed-SB r=16, all-MiniLM-L6-v2 on intent recognition, training set repeated {REPEAT}x and split IID, every "
        f"client trains 1 step of batch 2 every round, {args.rounds} rounds, public LoRA-SB init, evaluation on 64 "
        f"test examples after the last round, {args.threads} torch thread(s), one fresh process per k. "
        "`python benchmarks/client_scale.py`",
        "",
        md_table(rows, cols),
        goal,
        "",
        "The last column is what `init.source = federated` (dense float32 gradient sums) would add: the simulator's "
        "`initialise_adapters` collects all k client messages before combining them.",
        "",
        "![client scale](client_scale.png)",
        "",
        machine_line(machine),
        "",
    ])
    write_results("client_scale", rows, md, {"machine": machine, "ratio": ratio, "args": vars(args)})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ks = [r["clients"] for r in rows]
    ax1.plot(ks, [r["peak_rss_mb"] for r in rows], "o-")
    ax1.set_ylabel("peak RSS (MB)")
    ax1.set_ylim(0, max(r["peak_rss_mb"] for r in rows) * 1.2)
    ax2.plot(ks, [r["ms_per_client_update"] for r in rows], "o-")
    ax2.set_ylabel("ms per client update")
    ax2.set_ylim(0, max(r["ms_per_client_update"] for r in rows) * 1.2)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("virtual clients (all train every round)")
        ax.grid(alpha=0.3)
    fig.suptitle("fedsb simulator: memory and time vs clients", fontsize=10)
    fig.tight_layout()
    save_png(fig, "client_scale")
    print(md_table(rows, cols))
    print(goal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
