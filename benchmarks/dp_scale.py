"""Sample-level DP where it matters: Fed-SB vs FFA-LoRA vs FedIT on BIG-bench vitaminc_fact_verification.

all-MiniLM-L6-v2 (``model.name = minilm``) on the 54,668 claim/evidence pairs of BIG-bench
``vitaminc_fact_verification`` (3 labels: True / False / Neither; 49.8% True), loaded by fedsb's own loader
(``task.path`` = the task's ``task.json``). 3 IID clients hold the whole training pool (~17.5k examples each:
DP-SGD's cost per step does not depend on N, and a larger N lowers the Poisson rate q = batch / N). Every
private run is a full fedsb sample-level DP run (``dp.mode = sample``, ``dp.epsilon`` = 1 or 3, fedsb's
default delta and clipping): Poisson-sampled DP-SGD in every client, sigma solved per client over the whole
planned run, one accountant per client; Fed-SB's federated LoRA-SB init is privatised and charged to the
same accountant. Variants: Fed-SB r=32 (private federated init), Fed-SB r=32 with ``init.source = public``
(no privacy cost; the table also gives the private init's marginal share of epsilon), FFA-LoRA r=8, FedIT r=8.
Fed-SB, FFA-LoRA and FedIT also run without DP (the non-private ceiling) on the same schedule. Learning rates are fedsb's
defaults (``train.lr`` unset); nothing is tuned on the test split.

The test set is fixed across seeds and methods: a stratified held-out split drawn with ``--split-seed``
(default 0; 4% of the pool), of which the first ``--test-size`` examples are used. The run seed varies the
client partition, the head init, the adapter init and the DP sampling/noise.

    python benchmarks/dp_scale.py --calibrate       # time one DP / non-DP step of every variant, predict the total
    python benchmarks/dp_scale.py --quick           # tiny smoke run (seconds per run) -> results/dp_scale_quick.*
    # the benchmark: one single-threaded worker per seed, then merge (~1.5 h on the idle 2-core box, 11 runs
    # of ~8 min per worker; --resume continues an interrupted worker):
    for s in 0 1; do nohup python benchmarks/dp_scale.py --seeds $s --name dp_scale_s$s > dp_scale_s$s.log 2>&1 & done
    python benchmarks/dp_scale.py --merge dp_scale_s0 dp_scale_s1   # -> results/dp_scale.{md,csv,json,png}

``--data PATH`` points at the task file (a BIG-bench ``vitaminc_fact_verification/task.json``).
The paper's claim for comparison (bert-base-cased, SNLI, ~183k examples per client): at epsilon 1 Fed-SB 73.8
vs FFA-LoRA 70.1; at epsilon 3 74.9 vs 71.5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS, machine_info, machine_line, md_table, quiet, save_png, write_results  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "bigbench" / "vitaminc_fact_verification" / "task.json"
FEDSB_RANK = 32  # Fed-SB trains r^2 = 1,024 numbers per layer; FFA-LoRA r=8 trains 3,072, FedIT r=8 6,144
LORA_RANK = 8

#: variant -> method, rank, extra config. "fed-sb" keeps fedsb's default init source (privatised under DP).
VARIANTS: dict[str, dict[str, Any]] = {
    "fed-sb": {"method": "fed-sb", "rank": FEDSB_RANK, "config": {}},
    "fed-sb-public": {"method": "fed-sb", "rank": FEDSB_RANK, "config": {"init": {"source": "public"}}},
    "ffa-lora": {"method": "ffa-lora", "rank": LORA_RANK, "config": {}},
    "fedit": {"method": "fedit", "rank": LORA_RANK, "config": {}},
}

#: The schedule: what fits ~1.5 h per worker on a 2-core CPU (measure with --calibrate; results/dp_scale.md).
SCHEDULE: dict[str, Any] = {
    "rounds": 3,
    "steps": 3,  # DP-SGD steps per client per round (9 per client, ~1,150 examples of ~17.5k seen: the CPU budget)
    "batch": 128,  # expected Poisson batch (the fixed batch without DP)
    "max_length": 128,  # 99.1% of the pairs fit (median 55 tokens); longer ones lose the end of the claim
    "init_samples": 128,  # expected examples per client in Fed-SB's federated init (the public slice's size)
    "test_size": 1000,
    "client_examples": 0,  # 0 = the whole training pool split over the clients
}
QUICK: dict[str, Any] = {"rounds": 1, "steps": 2, "batch": 8, "max_length": 32, "init_samples": 8, "test_size": 32,
                         "client_examples": 64}
CLIENTS = 3
TEST_FRACTION = 0.04  # held-out pool (~2,190 examples) from which the fixed test set is taken


def build_config(variant: str, epsilon: float | None, seed: int, sched: dict[str, Any], data: str,
                 fedsb_rank: int = FEDSB_RANK, threads: int = 1) -> Any:
    """The validated fedsb ``RunConfig`` of one run (public config keys only)."""
    from fedsb.config import from_dict, merge, validate

    v = VARIANTS[variant]
    rank = fedsb_rank if v["method"] == "fed-sb" else v["rank"]
    base: dict[str, Any] = {
        "method": v["method"],
        "seed": seed,
        "model": {"name": "minilm"},
        "task": {"path": str(data), "max_length": sched["max_length"], "test_fraction": TEST_FRACTION,
                 "max_test_examples": sched["test_size"]},
        "adapter": {"rank": rank},
        "federation": {"clients": CLIENTS, "rounds": sched["rounds"], "partition": "iid"},
        "train": {"local_steps": sched["steps"], "batch_size": sched["batch"], "threads": threads},
        "init": {"samples": sched["init_samples"]},
        "eval": {"every": sched["rounds"], "batch_size": 64},  # evaluate after the init (always) and at the end
        "dp": {"mode": "off"} if epsilon is None else {"mode": "sample", "epsilon": epsilon},
    }
    return validate(from_dict(merge(base, v["config"])))


_LOADED: dict[tuple[int, str], tuple[Any, Any, dict[str, Any]]] = {}


def federation_for(cfg: Any, split_seed: int, client_examples: int) -> Any:
    """One model load and one task load per seed, shared by every run of that seed (the pristine weights are
    restored before each run). The train/test split uses ``split_seed``, so the test set is the same for all
    seeds; the run seed partitions the pool over the clients."""
    from dataclasses import replace

    from fedsb.core.federation import assemble_federation, model_kind
    from fedsb.models.load import load_model
    from fedsb.tasks import load_task

    key = (cfg.seed, json.dumps([cfg.task.path, cfg.task.max_test_examples, split_seed, client_examples]))
    if key not in _LOADED:
        _LOADED.clear()
        kind = model_kind(cfg)
        task = load_task(cfg.task, kind, split_seed)
        if client_examples:
            task = replace(task, train=task.train[: client_examples * cfg.federation.clients])
        loaded = load_model(cfg.model.name, kind, max(2, len(task.labels)), cfg.model.dtype, cfg.seed)
        _LOADED[key] = (loaded, task, {k: v.clone() for k, v in loaded.model.state_dict().items()})
    loaded, task, pristine = _LOADED[key]
    loaded.model.load_state_dict(pristine)
    import torch

    torch.manual_seed(cfg.seed)
    return assemble_federation(cfg, loaded, task)


def run_one(variant: str, epsilon: float | None, seed: int, sched: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from fedsb.core.summary import analytic_round_params
    from fedsb.privacy import make_dp_trainer
    from fedsb.simulation.simulator import Simulator

    cfg = build_config(variant, epsilon, seed, sched, args.data, args.fedsb_rank, args.threads)
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    fed = federation_for(cfg, args.split_seed, sched["client_examples"])
    try:
        trainer = make_dp_trainer(fed)
        sim = Simulator(cfg, fed=fed, trainer=trainer, progress=False) if trainer else Simulator(cfg, fed=fed, progress=False)
        result = sim.run()
        up, _ = analytic_round_params(fed, cfg.federation.clients)
        trainable = fed.adapted.num_trainable()
        sizes = [len(s) for s in fed.shards]
        test_labels = [e.label for e in fed.task.test]
    finally:
        fed.adapted.unload()
    rows = result.rows
    last = rows[-1]
    priv = result.summary.get("privacy") or {}
    parties = priv.get("parties", {})
    sigmas = [p["noise_multiplier"] for p in parties.values()]
    init_sigmas = [p["init_noise_multiplier"] for p in parties.values() if p.get("init_noise_multiplier") is not None]
    eps_spent = float(last["epsilon"]) if "epsilon" in last else math.inf
    eps_init = float(rows[0].get("epsilon", 0.0)) if epsilon is not None else None
    eps_train_alone = training_alone_epsilon(parties, last.get("delta")) if epsilon is not None else None
    majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
    return {
        "variant": variant,
        "method": cfg.method,
        "rank": cfg.adapter.rank,
        "init_source": cfg.init.source if fed.method.gradient_init else "-",
        "epsilon_target": epsilon if epsilon is not None else math.inf,
        "seed": seed,
        "accuracy": last["accuracy"],
        "initial_accuracy": rows[0]["accuracy"],
        "majority_accuracy": majority,
        "rounds_run": len(rows) - 1,
        "epsilon_spent": eps_spent,
        "epsilon_after_init": eps_init,
        "init_share": eps_init / eps_spent if eps_init is not None and eps_spent > 0 else None,
        "epsilon_training_alone": eps_train_alone,
        "init_marginal_share": (1 - eps_train_alone / eps_spent) if eps_train_alone is not None and eps_spent > 0 else None,
        "delta": last.get("delta"),
        "dp_noise": last.get("dp_noise") or priv.get("noise"),  # "secret", or the reproducible (not private) opt-in
        "noise_multiplier_min": min(sigmas) if sigmas else 0.0,
        "noise_multiplier_max": max(sigmas) if sigmas else 0.0,
        "init_noise_multiplier": max(init_sigmas) if init_sigmas else 0.0,
        "client_examples_min": min(sizes),
        "client_examples_max": max(sizes),
        "test_examples": len(test_labels),
        "trainable_params": trainable,
        "upload_params_per_round": up,
        "init_seconds": rows[0].get("seconds"),
        "round_seconds": [r.get("seconds") for r in rows[1:]],
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),  # ~ the wall time on an idle core (1 thread)
        "load_average_at_start": round(load0, 2),
        "privacy_parties": {k: {kk: p.get(kk) for kk in ("epsilon", "noise_multiplier", "sample_rate", "init_sample_rate",
                                                          "init_noise_multiplier", "size", "history")}
                            for k, p in parties.items()},
        "stopped_early": result.summary.get("stopped_early"),
    }


def training_alone_epsilon(parties: dict[str, Any], delta: float | None) -> float | None:
    """Max over clients of the epsilon their DP-SGD steps alone spend (the history without the init's step).

    Under RDP composition the first mechanism is the dearest: the init alone may spend most of epsilon while
    adding little to the total. ``1 - this / epsilon spent`` is the init's marginal share of the budget."""
    from fedsb.privacy import epsilon_of

    if not parties or delta is None:
        return None
    out = 0.0
    for p in parties.values():
        hist = [[float(e[0]), float(e[1]), int(e[2])] for e in p.get("history") or []]
        q0, s0 = p.get("init_sample_rate"), p.get("init_noise_multiplier")
        if q0 is not None:  # the init is one step of (s0, q0), merged with training steps when they match
            i = next((k for k, e in enumerate(hist) if math.isclose(e[1], float(q0))
                      and (s0 is None or math.isclose(e[0], float(s0)))), None)
            if i is not None:
                hist[i][2] -= 1
        out = max(out, epsilon_of(hist, float(delta)))
    return out


def eps_label(e: float) -> str:
    return "no DP" if not math.isfinite(e) else f"{e:g}"


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    order = list(VARIANTS)
    keys = sorted({(r["variant"], r["epsilon_target"]) for r in rows}, key=lambda k: (order.index(k[0]), k[1]))
    for v, e in keys:
        rs = [r for r in rows if r["variant"] == v and r["epsilon_target"] == e]
        accs = [r["accuracy"] for r in rs]
        ceil = [r["accuracy"] for r in rows if r["variant"] == v and not math.isfinite(r["epsilon_target"])]
        out.append({
            "variant": v, "rank": rs[0]["rank"], "init_source": rs[0]["init_source"], "epsilon": e, "seeds": len(rs),
            "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "ceiling": statistics.mean(ceil) if ceil else None,
            "epsilon_spent_max": max(r["epsilon_spent"] for r in rs),
            "epsilon_after_init": max(r["epsilon_after_init"] for r in rs) if math.isfinite(e) else None,
            "init_share": max(r["init_share"] for r in rs) if math.isfinite(e) else None,
            "init_marginal_share": (max(r.get("init_marginal_share") or 0.0 for r in rs) if math.isfinite(e) else None),
            "delta": rs[0]["delta"],
            "sigma": (f"{min(r['noise_multiplier_min'] for r in rs):.3f}-{max(r['noise_multiplier_max'] for r in rs):.3f}"
                      if math.isfinite(e) else "-"),
            "trainable_params": rs[0]["trainable_params"], "upload_params_per_round": rs[0]["upload_params_per_round"],
            "seconds_mean": statistics.mean(r["seconds"] for r in rs),
        })
    return out


def verdict(summary: list[dict[str, Any]], majority: float | None, test_size: int) -> str:
    """What the table can say: whether any non-private ceiling leaves the majority class (by more than two binomial
    standard errors of the test set), and only then how Fed-SB compares with FFA-LoRA under DP."""
    ceilings = {s["variant"]: s["accuracy_mean"] for s in summary if not math.isfinite(s["epsilon"])}
    if majority is None or not ceilings:
        return "No non-private ceiling yet: the table cannot say whether the methods learn the task at this budget."
    margin = 2 * (majority * (1 - majority) / test_size) ** 0.5
    best = max(ceilings, key=lambda v: ceilings[v])
    if ceilings[best] <= majority + margin:
        return (f"**No ranking is possible here**: every non-private ceiling (best {best}, {ceilings[best]:.4f}) is within two "
                f"standard errors ({margin:.3f}) of the majority share {majority:.4f}, so at this budget no method learns the task "
                "even without noise, and the DP rows at the majority share say nothing about the methods. What the table does "
                "measure is the accounting: the solved noise multipliers and the private init's share of the budget.")
    lines = [f"The best non-private ceiling ({best}, {ceilings[best]:.4f}) leaves the majority share {majority:.4f} by more than "
             f"two standard errors ({margin:.3f})."]
    for e in sorted({s["epsilon"] for s in summary if math.isfinite(s["epsilon"])}):
        acc = {s["variant"]: s for s in summary if s["epsilon"] == e}
        if "fed-sb" in acc and "ffa-lora" in acc:
            a, b = acc["fed-sb"], acc["ffa-lora"]
            lines.append(f"Epsilon {e:g}: Fed-SB {a['accuracy_mean']:.4f} ± {a['accuracy_std']:.4f} vs FFA-LoRA "
                         f"{b['accuracy_mean']:.4f} ± {b['accuracy_std']:.4f}.")
    return " ".join(lines)


def plot(summary: list[dict[str, Any]], title: str, majority: float | None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    eps_values = sorted({s["epsilon"] for s in summary if math.isfinite(s["epsilon"])})
    no_dp_x = (max(eps_values) * 1.6) if eps_values else 1.0
    for i, v in enumerate(VARIANTS):
        ss = [s for s in summary if s["variant"] == v]
        if not ss:
            continue
        color = f"C{i}"
        xs = [s["epsilon"] if math.isfinite(s["epsilon"]) else no_dp_x for s in ss]
        label = f"{v} r={ss[0]['rank']} ({ss[0]['upload_params_per_round']:,} params up/round)"
        ax.errorbar(xs, [s["accuracy_mean"] for s in ss], yerr=[s["accuracy_std"] for s in ss], marker="o", capsize=3,
                    color=color, label=label)
        if ss[0]["ceiling"] is not None:
            ax.axhline(ss[0]["ceiling"], color=color, linestyle="--", linewidth=0.8, alpha=0.6)
    if majority is not None:
        ax.axhline(majority, color="grey", linestyle=":", linewidth=1, label=f"majority class ({majority:.3f})")
    ticks = eps_values + ([no_dp_x] if any(not math.isfinite(s["epsilon"]) for s in summary) else [])
    ax.set_xticks(ticks, [f"{t:g}" for t in eps_values] + (["no DP"] if len(ticks) > len(eps_values) else []))
    ax.set_xlabel("epsilon (sample-level, per client); dashed: the variant's non-private ceiling")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(textwrap.fill(title, 115), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def write_all(args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any], wall: float,
              quiet: bool = False) -> None:
    summary = aggregate(rows)
    s = meta["schedule"]
    seeds = sorted({r["seed"] for r in rows})
    n_client = (f"{min(r['client_examples_min'] for r in rows):,}-{max(r['client_examples_max'] for r in rows):,}"
                if rows else "?")
    fedsb_ranks = sorted({r["rank"] for r in rows if r["method"] == "fed-sb"}) or [args.fedsb_rank]
    setting = (f"all-MiniLM-L6-v2 on BIG-bench vitaminc_fact_verification (3 labels), {CLIENTS} IID clients of "
               f"{n_client} examples x {s['rounds']} rounds x {s['steps']} local steps (DP: Poisson, expected batch "
               f"{s['batch']}), max length {s['max_length']}, fedsb's default clip, delta and learning rates, "
               f"Fed-SB r={'/'.join(map(str, fedsb_ranks))} (federated init from {s['init_samples']} expected examples "
               f"per client, privatised), LoRA methods r={LORA_RANK}; test set {s['test_size']} examples fixed across "
               f"seeds (split seed {args.split_seed}); seeds {seeds}")
    cols = [("variant", "variant", str), ("rank", "r", str), ("init_source", "init", str),
            ("epsilon", "target eps", eps_label),
            ("accuracy_mean", "accuracy", lambda v: f"{v:.4f}"), ("accuracy_std", "± std", lambda v: f"{v:.4f}"),
            ("seeds", "seeds", str), ("ceiling", "no-DP ceiling", lambda v: f"{v:.4f}"),
            ("epsilon_spent_max", "eps spent (max client)", lambda v: "-" if not math.isfinite(v) else f"{v:.3f}"),
            ("epsilon_after_init", "eps of the init", lambda v: f"{v:.3f}"),
            ("init_share", "init alone / spent", lambda v: f"{100 * v:.0f}%"),
            ("init_marginal_share", "init's marginal share", lambda v: f"{100 * v:.1f}%"),
            ("delta", "delta", lambda v: f"{v:.2g}"), ("sigma", "noise multiplier", str),
            ("trainable_params", "trainable", lambda v: f"{v:,}"), ("seconds_mean", "s/run", lambda v: f"{v:.0f}")]
    majority = rows[0]["majority_accuracy"] if rows else None
    init_acc = statistics.mean(r["initial_accuracy"] for r in rows) if rows else float("nan")
    run_seconds = sum(r["seconds"] for r in rows)
    parts = meta.get("parts", [])
    if parts:
        walls = ", ".join(f"{p['wall_seconds'] / 60:.1f}" for p in parts)
        timing = (f"Merged from {', '.join(p['name'] for p in parts)} (one single-threaded worker each; side by side "
                  f"the wall time is the longest worker's): worker wall times {walls} min, so "
                  f"**{max(p['wall_seconds'] for p in parts) / 60:.1f} min wall**; {len(rows)} runs, "
                  f"{run_seconds / 60:.1f} min summed over runs.")
        machines = " ".join(f"{p['name']}: {machine_line(p['machine'])}" for p in parts)
    else:
        timing = f"Wall time of this invocation {wall / 60:.1f} min; {len(rows)} runs, {run_seconds / 60:.1f} min summed over runs."
        machines = machine_line(meta["machine"])
    md = (f"# DP at scale (sample-level DP-SGD, vitaminc_fact_verification)\n\n{setting}.\n\n" + md_table(summary, cols)
          + f"\n{verdict(summary, majority, s['test_size'])}\n\nTest set: majority class {majority if majority is None else f'{majority:.4f}'}; before training the "
          f"models score {init_acc:.4f} on average. `eps of the init` is what Fed-SB's private init alone spends "
          "(row 0 of the run); `init alone / spent` = that / eps spent. RDP composition is sublinear, so the first "
          "mechanism looks dearest: `init's marginal share` = 1 - (eps the DP-SGD steps alone spend) / (eps spent) is "
          "what the init adds; compare also fed-sb's noise multiplier (solved with the init) with fed-sb-public's "
          "(without). `fed-sb-public` takes its init from a slice of the "
          "training pool held out from every client (no privacy cost).\n\n"
          f"DP noise: {', '.join(sorted({str(r.get('dp_noise')) for r in rows if r.get('dp_noise')})) or '-'}.\n\n"
          "Paper (bert-base-cased, SNLI, ~183k examples per client): epsilon 1: Fed-SB 73.8 vs FFA-LoRA 70.1; "
          "epsilon 3: 74.9 vs 71.5.\n\n"
          f"{timing} s/run: wall seconds per run (model and data load of the seed's first run included) on the "
          f"shared box.\n\n{machines}\n")
    paths = write_results(args.name, rows, md, {**meta, "summary": summary, "wall_seconds": round(wall, 1),
                                                 "verdict": verdict(summary, majority, s["test_size"])})
    save_png(plot(summary, setting, majority), args.name)
    if not quiet:
        print(md)
        print("wrote", ", ".join(str(p) for p in paths))


def time_eval(args: argparse.Namespace, sched: dict[str, Any], n: int) -> tuple[float, float]:
    """Wall and CPU seconds per test example of one server evaluation (forward only) at ``sched``'s max length."""
    cfg = build_config("ffa-lora", None, args.seeds[0], {**sched, "test_size": n}, args.data, args.fedsb_rank, args.threads)
    fed = federation_for(cfg, args.split_seed, sched["client_examples"])
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        fed.objective.evaluate(fed.adapted.model, fed.task.test[:n], cfg.eval.batch_size)
        k = min(n, len(fed.task.test))
        return (time.perf_counter() - t0) / k, (time.process_time() - c0) / k
    finally:
        fed.adapted.unload()


def calibrate(args: argparse.Namespace, sched: dict[str, Any]) -> None:
    """Time the pieces of a run at ``sched``'s batch, max length and init size (2 short rounds per variant) and
    predict one worker's (one seed's) time for the full schedule."""
    cal = {**sched, "rounds": 2, "steps": args.cal_steps, "test_size": args.cal_test}
    seed = args.seeds[0]
    load = os.getloadavg()
    ev, ev_cpu = time_eval(args, cal, args.cal_test)
    print(f"eval: {1000 * ev:.0f} ms/example wall, {1000 * ev_cpu:.0f} ms CPU (max_length {cal['max_length']}); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    ratios = [ev_cpu / ev]
    per_step: dict[tuple[str, bool], float] = {}
    init_s: dict[tuple[str, bool], float] = {}
    eps = args.epsilons[0]
    for dp in (True, False):
        for v in args.variants if dp else args.ceiling:
            load = os.getloadavg()
            r = run_one(v, eps if dp else None, seed, cal, args)
            per_step[(v, dp)] = r["round_seconds"][0] / (CLIENTS * cal["steps"])
            init_s[(v, dp)] = r["init_seconds"] or 0.0
            ratios.append(r["cpu_seconds"] / r["seconds"])
            print(f"{v:14s} {'DP eps=' + format(eps, 'g') if dp else 'no DP':9s}: {per_step[(v, dp)]:.2f} s/step "
                  f"(batch {cal['batch']}, max_length {cal['max_length']}), init {init_s[(v, dp)]:.1f} s, "
                  f"sigma {r['noise_multiplier_max']:.3f}, run {r['seconds']:.0f} s wall / {r['cpu_seconds']:.0f} s CPU; "
                  f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    total = 0.0
    for (v, dp), st in per_step.items():
        n = len(args.epsilons) if dp else 1
        t = init_s[(v, dp)] + sched["rounds"] * CLIENTS * sched["steps"] * st + 2 * sched["test_size"] * ev + 5
        total += n * t
        print(f"predicted {v:14s} {'DP' if dp else 'no DP':5s}: {t:.0f} s/run x {n}")
    ratio = statistics.median(ratios)
    print(f"predicted per seed (one worker): {total / 60:.1f} min at the load of this calibration "
          f"({os.getloadavg()[0]:.2f} now); {total * ratio / 60:.1f} min on a free core (CPU/wall {ratio:.2f}); "
          f"schedule {sched}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the BIG-bench vitaminc_fact_verification task.json")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 (0 with --quick)")
    ap.add_argument("--ceiling", nargs="*", default=["fed-sb", "ffa-lora", "fedit"], choices=list(VARIANTS),
                    help="variants that also run without DP (the non-private ceiling); none: --ceiling")
    ap.add_argument("--fedsb-rank", type=int, default=FEDSB_RANK)
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (same test set for all seeds)")
    for k, v in SCHEDULE.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None, help=f"default {v} ({QUICK[k]} with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds per run")
    ap.add_argument("--calibrate", action="store_true", help="time one step of every variant and predict the total")
    ap.add_argument("--cal-steps", type=int, default=3, help="local steps per round when calibrating")
    ap.add_argument("--cal-test", type=int, default=128, help="test examples when calibrating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="result name (default dp_scale, dp_scale_quick with --quick)")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs in results/<name>.json, run the rest")
    ap.add_argument("--merge", nargs="*", default=[], help="combine the rows of these earlier result names (no new runs)")
    args = ap.parse_args(argv)
    sched = {k: (getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else SCHEDULE)[k])
             for k in SCHEDULE}
    args.name = args.name or ("dp_scale_quick" if args.quick else "dp_scale")
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    if not args.merge and not Path(args.data).is_file():
        sys.exit(f"error: {args.data} not found; pass --data /path/to/vitaminc_fact_verification/task.json")

    import torch

    quiet()
    torch.set_num_threads(args.threads)
    if args.calibrate:
        calibrate(args, sched)
        return
    meta: dict[str, Any] = {"machine": machine_info(args.threads), "schedule": sched, "data": Path(args.data).name,
                            "split_seed": args.split_seed,
                            "variants": {v: {**VARIANTS[v], "rank": args.fedsb_rank if VARIANTS[v]["method"] == "fed-sb"
                                             else VARIANTS[v]["rank"]} for v in args.variants}}
    rows: list[dict[str, Any]] = []
    if args.merge:  # rows of earlier invocations (one worker per seed)
        meta["parts"] = []
        for part in args.merge:
            d = json.loads((RESULTS / f"{part}.json").read_text())
            rows += d["rows"]
            meta["parts"].append({"name": part, "wall_seconds": d["wall_seconds"], "machine": d["machine"]})
        meta["schedule"] = d["schedule"]
        meta["machine"] = meta["parts"][0]["machine"]
    t_all = time.perf_counter()
    # eps[0], then the ceilings, then the other epsilons: a worker stopped early still has one complete comparison.
    eps_first, eps_rest = args.epsilons[:1], args.epsilons[1:]
    plan = ([(e, v) for e in eps_first for v in args.variants] + [(None, v) for v in args.ceiling]
            + [(e, v) for e in eps_rest for v in args.variants])
    prev_wall = 0.0
    if args.resume and not args.merge and (RESULTS / f"{args.name}.json").is_file():  # an interrupted worker
        d = json.loads((RESULTS / f"{args.name}.json").read_text())
        rows = [r for r in d["rows"] if r["seed"] in args.seeds]
        prev_wall = sum(r["seconds"] for r in rows)  # the finished runs' share of the earlier wall time
        print(f"resuming {args.name}: {len(rows)} finished runs kept", flush=True)
    done = {(r["variant"], r["epsilon_target"], r["seed"]) for r in rows}
    for seed in args.seeds if not args.merge else []:
        for eps, v in plan:
            if (v, eps if eps is not None else math.inf, seed) in done:
                continue
            r = run_one(v, eps, seed, sched, args)
            rows.append(r)
            print(f"{v:14s} eps={eps_label(r['epsilon_target']):>5} seed={seed}: acc {r['accuracy']:.4f} "
                  f"(init {r['initial_accuracy']:.4f}; eps spent {r['epsilon_spent']:.3f}, init {r['epsilon_after_init'] or 0.0:.3f}, "
                  f"sigma {r['noise_multiplier_min']:.3f}) {r['seconds']:.0f}s load {r['load_average_at_start']}", flush=True)
            write_all(args, rows, meta, prev_wall + time.perf_counter() - t_all, quiet=True)  # survives a kill
    write_all(args, rows, meta, prev_wall + time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
