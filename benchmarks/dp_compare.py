"""Accuracy under sample-level DP: Fed-SB vs FFA-LoRA, FedIT, FedEx-LoRA at epsilon 1 and 3 (and without DP).

Embedded task (all-MiniLM-L6-v2 on BIG-bench intent_recognition, 7 classes), 3 IID clients, 3 seeds.
Every run is a full fedsb sample-level DP run: Poisson-sampled DP-SGD with Opacus in every client, sigma
solved per client from the target (epsilon, delta = 1/max N_client) over the whole planned run, one RDP
accountant per client kept across rounds; for Fed-SB the federated LoRA-SB init is privatised and charged to
the same accountant. The schedule is reduced (DEFAULTS: 3 rounds x 5 local steps, expected batch 16,
init from 16 expected examples per client) because one MiniLM step costs ~0.6-1.3 CPU-seconds here; the
24 DP runs need ~15 CPU-minutes. Runs of one seed share one model load (the pristine weights are restored
before each run).

    python benchmarks/dp_compare.py                 # writes benchmarks/results/dp_compare.{md,csv,json,png}
    python benchmarks/dp_compare.py --seeds 0 --epsilons 1 --methods fed-sb   # one quick run
    # one single-threaded worker per seed, then merge (how the committed table was made):
    for s in 0 1 2; do python benchmarks/dp_compare.py --seeds $s --name dp_compare_s$s & done; wait
    python benchmarks/dp_compare.py --merge dp_compare_s0 dp_compare_s1 dp_compare_s2

The paper's claim for comparison (bert-base-cased, SNLI, 3 clients): at epsilon 1 Fed-SB 73.8 vs
FFA-LoRA 70.1; at epsilon 3 74.9 vs 71.5.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_info, machine_line, md_table, save_png, write_results  # noqa: E402

METHODS = {"fed-sb": 16, "ffa-lora": 8, "fedit": 8, "fedex-lora": 8}  # method -> rank (DESIGN.md section 8)
DEFAULTS: dict[str, Any] = {
    "model": {"name": "minilm"},
    "federation": {"clients": 3, "rounds": 3, "partition": "iid"},
    "train": {"local_steps": 5, "batch_size": 16, "threads": 1},
    "task": {"max_length": 48},
    "init": {"samples": 16},
    "eval": {"every": 100, "batch_size": 128},
    "dp": {"max_grad_norm": 1.0},
}


_LOADED: dict[int, tuple[Any, Any, dict[str, Any]]] = {}


def federation_for(cfg: Any) -> Any:
    """One model load and task split per seed, shared by every (method, epsilon) run of that seed: the
    bare model's pristine weights (base and seeded head) are restored before each run."""
    from fedsb.core.federation import assemble_federation, model_kind
    from fedsb.models.load import load_model
    from fedsb.tasks import load_task

    if cfg.seed not in _LOADED:
        _LOADED.clear()
        kind = model_kind(cfg)
        task = load_task(cfg.task, kind, cfg.seed)
        loaded = load_model(cfg.model.name, kind, max(2, len(task.labels)), cfg.model.dtype, cfg.seed)
        _LOADED[cfg.seed] = (loaded, task, {k: v.clone() for k, v in loaded.model.state_dict().items()})
    loaded, task, pristine = _LOADED[cfg.seed]
    loaded.model.load_state_dict(pristine)
    import torch

    torch.manual_seed(cfg.seed)
    return assemble_federation(cfg, loaded, task)


def run_one(method: str, rank: int, epsilon: float | None, seed: int, over: dict[str, Any]) -> dict[str, Any]:
    from fedsb.config import from_dict, merge, validate
    from fedsb.core.summary import analytic_round_params
    from fedsb.privacy import make_dp_trainer
    from fedsb.simulation.simulator import Simulator

    data = merge(merge(DEFAULTS, over), {"method": method, "seed": seed, "adapter": {"rank": rank}})
    if epsilon is None:
        data = merge(data, {"dp": {"mode": "off"}})
    else:
        data = merge(data, {"dp": {"mode": "sample", "epsilon": epsilon}})
    cfg = validate(from_dict(data))
    t0 = time.perf_counter()
    fed = federation_for(cfg)
    try:
        trainer = make_dp_trainer(fed)
        sim = Simulator(cfg, fed=fed, trainer=trainer, progress=False) if trainer else Simulator(cfg, fed=fed, progress=False)
        result = sim.run()
        up, down = analytic_round_params(fed, cfg.federation.clients)
        trainable = fed.adapted.num_trainable()
    finally:
        fed.adapted.unload()
    last = result.rows[-1]
    priv = result.summary.get("privacy", {})
    sigmas = [p["noise_multiplier"] for p in priv.get("parties", {}).values()]
    return {
        "method": method,
        "rank": rank,
        "epsilon_target": epsilon if epsilon is not None else math.inf,
        "seed": seed,
        "accuracy": last["accuracy"],
        "initial_accuracy": result.rows[0]["accuracy"],
        "epsilon_spent": last.get("epsilon", math.inf),
        "epsilon_after_init": result.rows[0].get("epsilon", 0.0),
        "delta": last.get("delta"),
        "noise_multiplier_min": min(sigmas) if sigmas else 0.0,
        "noise_multiplier_max": max(sigmas) if sigmas else 0.0,
        "trainable_params": trainable,
        "upload_params_per_round": up,
        "download_params_per_round": down,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["method"], r["epsilon_target"]) for r in rows}, key=lambda k: (list(METHODS).index(k[0]), k[1]))
    for m, e in keys:
        rs = [r for r in rows if r["method"] == m and r["epsilon_target"] == e]
        accs = [r["accuracy"] for r in rs]
        out.append({
            "method": m, "rank": rs[0]["rank"], "epsilon": e, "seeds": len(rs),
            "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "epsilon_spent_max": max(r["epsilon_spent"] for r in rs),
            "epsilon_after_init": max(r["epsilon_after_init"] for r in rs),
            "sigma": f"{min(r['noise_multiplier_min'] for r in rs):.2f}-{max(r['noise_multiplier_max'] for r in rs):.2f}",
            "trainable_params": rs[0]["trainable_params"], "upload_params_per_round": rs[0]["upload_params_per_round"],
            "seconds_mean": statistics.mean(r["seconds"] for r in rs),
        })
    return out


def plot(summary: list[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    eps_values = sorted({s["epsilon"] for s in summary if math.isfinite(s["epsilon"])})
    no_dp_x = (max(eps_values) * 1.6) if eps_values else 1.0
    for m in METHODS:
        ss = [s for s in summary if s["method"] == m]
        if not ss:
            continue
        xs = [s["epsilon"] if math.isfinite(s["epsilon"]) else no_dp_x for s in ss]
        label = f"{m} r={ss[0]['rank']} ({ss[0]['upload_params_per_round']:,} params/client/round up)"
        ax.errorbar(xs, [s["accuracy_mean"] for s in ss], yerr=[s["accuracy_std"] for s in ss], marker="o", capsize=3,
                    label=label)
    ticks = eps_values + ([no_dp_x] if any(not math.isfinite(s["epsilon"]) for s in summary) else [])
    ax.set_xticks(ticks, [f"{t:g}" for t in eps_values] + (["no DP"] if len(ticks) > len(eps_values) else []))
    ax.set_xlabel("epsilon (sample-level, per client; delta = 1/max N_client)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(textwrap.fill(title, 110), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-dp", action="store_true", help="also run every method without DP (reference)")
    ap.add_argument("--rounds", type=int, default=DEFAULTS["federation"]["rounds"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["train"]["local_steps"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="dp_compare")
    ap.add_argument("--merge", nargs="*", default=[], help="combine the rows of these earlier result names (no new runs)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    over = {"federation": {"rounds": args.rounds}, "train": {"local_steps": args.steps, "threads": args.threads}}
    meta = {"machine": machine_info(args.threads), "settings": {**DEFAULTS, **over}, "methods": {m: METHODS[m] for m in args.methods}}
    eps_list: list[float | None] = [*args.epsilons, *([None] if args.no_dp else [])]
    rows: list[dict[str, Any]] = []
    for part in args.merge:  # rows of earlier invocations (e.g. one worker per seed)
        rows += json.loads((RESULTS / f"{part}.json").read_text())["rows"]
    t_all = time.perf_counter()
    for seed in args.seeds if not args.merge else []:
        for eps in eps_list:
            for m in args.methods:
                r = run_one(m, METHODS[m], eps, seed, over)
                rows.append(r)
                print(f"{m:11s} eps={eps if eps is not None else 'inf':>4} seed={seed}: acc {r['accuracy']:.4f} "
                      f"(eps spent {r['epsilon_spent']:.3f}, after init {r['epsilon_after_init']:.3f}, "
                      f"sigma {r['noise_multiplier_min']:.2f}-{r['noise_multiplier_max']:.2f}) {r['seconds']:.0f}s", flush=True)
                write_all(args, rows, meta, time.perf_counter() - t_all, quiet=True)  # partial results survive a kill
    write_all(args, rows, meta, time.perf_counter() - t_all)


def write_all(args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any], wall: float, quiet: bool = False) -> None:
    summary = aggregate(rows)
    s = DEFAULTS
    seeds = sorted({r["seed"] for r in rows})
    setting = (f"MiniLM-L6 on BIG-bench intent_recognition, {s['federation']['clients']} IID clients x {args.rounds} rounds x "
               f"{args.steps} DP-SGD steps (Poisson, expected batch {s['train']['batch_size']}), clip {s['dp']['max_grad_norm']}, "
               f"AdamW at fedsb's default learning rates, init.samples {s['init']['samples']}, seeds {seeds}")
    cols = [("method", "method", str), ("rank", "r", str), ("epsilon", "target eps", lambda v: "no DP" if not math.isfinite(v) else f"{v:g}"),
            ("accuracy_mean", "accuracy", lambda v: f"{v:.4f}"), ("accuracy_std", "± std", lambda v: f"{v:.4f}"),
            ("epsilon_spent_max", "eps spent (max client)", lambda v: "-" if not math.isfinite(v) else f"{v:.3f}"),
            ("epsilon_after_init", "eps after init", lambda v: f"{v:.3f}"), ("sigma", "noise multiplier", str),
            ("trainable_params", "trainable", lambda v: f"{v:,}"), ("upload_params_per_round", "up params/client/round", lambda v: f"{v:,}"),
            ("seconds_mean", "s/run", lambda v: f"{v:.0f}")]
    md = (f"# DP comparison (sample-level DP-SGD)\n\n{setting}.\n\n" + md_table(summary, cols)
          + "\nPaper (bert-base-cased, SNLI, 3 clients): epsilon 1: Fed-SB 73.8 vs FFA-LoRA 70.1; epsilon 3: 74.9 vs 71.5.\n\n"
          + f"{machine_line(meta['machine'])} "
          + (f"Merged from {', '.join(args.merge)} (one single-threaded worker per seed)" if args.merge
             else f"Wall time of this invocation {wall / 60:.1f} min")
          + " (s/run: wall seconds per run on the shared box).\n")
    paths = write_results(args.name, rows, md, {**meta, "summary": summary, "wall_seconds": round(wall, 1)})
    save_png(plot(summary, setting), args.name)
    if not quiet:
        print(md)
        print("wrote", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
