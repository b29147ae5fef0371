"""Federated commonsense instruction tuning: Fed-SB vs FedIT, FFA-LoRA, FedEx-LoRA, FLoRA with SmolLM2-135M (issue 17).

Every run is the ``commonsense-mini`` preset (SmolLM2-135M-Instruct, the LLM-Adapters commonsense suite loaded from
``task.path``: 4 training sets capped per source, 7 test sets, likelihood scoring, 3 clients) with the method, rank,
partition, seed and learning rate changed. Variants: Fed-SB at ranks 16 and 64 (``--fedsb-ranks``), the LoRA
baselines at a common rank 8 (``--lora-rank``). Splits: ``source`` (non-IID by data set, the preset's) and ``iid``.

Learning rates: a short sweep per variant (multipliers ``--tune-lr`` of the method's default rate) on seed 0 and the
source split, scored on a validation slice of the training pool (``task.evaluate_on = "validation"``), never on the
test sets; the chosen rate is reused for every split and seed. ``--lr-from NAME`` takes the rates an earlier
invocation chose (results/NAME.json), so per-seed workers need not each repeat the sweep.

Sizes: the preset's data (200 train examples per source) and model, with the schedule and test subsample of ``SIZES``
(3 rounds x 3 local steps of batch 8, 40 test examples per set) so that the whole benchmark (12 sweep runs with
``--tune-lr 1,3``, 24 runs, the base model) fits in ~2 hours on 2 CPU cores as 2 workers (``--variants``): a training step of SmolLM2-135M at
batch 8 and ~150 tokens takes 5-13 s on one thread, scoring one test example ~0.4 s. Runs score the test sets once,
after the last round; the "base model" row is one extra evaluation of the pretrained model (a LoRA adapter at B = 0),
identical for both splits (``--no-base`` skips it in a second worker).

    python benchmarks/commonsense.py --quick                          # smoke run, minutes on a CPU
    # two workers, one per core, each sweeping and running its own variants (results written after each run)
    python benchmarks/commonsense.py --tune-lr 1,3 --variants fed-sb-r16 fed-sb-r64 fedit --name commonsense_a
    python benchmarks/commonsense.py --tune-lr 1,3 --variants ffa-lora fedex-lora flora --no-base --name commonsense_b
    python benchmarks/commonsense.py --merge commonsense_a commonsense_b   # -> results/commonsense.{md,csv,json,png}

``--data PATH``: the commonsense folder (one sub-folder per data set with train.json / test.json).
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

from common import REPO, RESULTS, Column, machine_info, machine_line, md_table, quiet, save_png, write_results  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "commonsense"
PRESET = "commonsense-mini"
SOURCES = ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa", "social_i_qa", "winogrande"]
BASELINES = ["fedit", "ffa-lora", "fedex-lora", "flora"]
FEDSB_RANKS = [16, 64]
LORA_RANK = 8
SPLITS = ["source", "iid"]
TUNE_LR = "0.3,1,3"
#: --quick: everything tiny (one round of one local step, 4 train / 2 test examples per source, rank 4)
QUICK: dict[str, Any] = {"task": {"max_train_per_source": 4, "max_test_per_source": 2},
                         "federation": {"rounds": 1}, "train": {"local_steps": 1, "batch_size": 2},
                         "init": {"samples": 2, "batch_size": 2}, "eval": {"every": 1}}
QUICK_RANK = 4
#: the benchmark's schedule and test subsample (over the preset's 3 rounds x 6 steps, 50 per set): fits 2 hours
SIZES: dict[str, Any] = {"federation": {"rounds": 3}, "train": {"local_steps": 3}, "task": {"max_test_per_source": 40}}
BASE = "base model"


def variants(fedsb_ranks: list[int], lora_rank: int) -> dict[str, tuple[str, int]]:
    """variant name -> (method, rank)."""
    out = {f"fed-sb-r{r}": ("fed-sb", r) for r in fedsb_ranks}
    out.update({m: (m, lora_rank) for m in BASELINES})
    return out


def preset_dict() -> dict[str, Any]:
    from fedsb.presets import load_presets

    return {k: v for k, v in load_presets()[PRESET].items() if k != "description"}


def build_config(method: str, rank: int, split: str, seed: int, data: str, lr: float | None = None,
                 validation: bool = False, quick: bool = False, threads: int = 1) -> Any:
    """The validated fedsb ``RunConfig`` of one run: the preset with these keys changed."""
    from fedsb.config import from_dict, merge, validate

    over: dict[str, Any] = {
        "method": method, "seed": seed,
        "task": {"path": str(data), "evaluate_on": "validation" if validation else "test"},
        "adapter": {"rank": rank},
        "federation": {"partition": split},
        "train": {"threads": threads, **({"lr": lr} if lr is not None else {})},
    }
    base = merge(preset_dict(), QUICK if quick else SIZES)
    cfg = validate(from_dict(merge(base, over)))
    rounds = cfg.federation.rounds
    # evaluate at the end only: no round-0 evaluation (the base model is scored once by base_eval)
    return validate(from_dict(merge(cfg.to_dict(), {"eval": {"every": rounds, "initial": False}})))


def default_lr(method: str, rank: int) -> float:
    from fedsb.methods import get_method

    return float(get_method(method).default_lr(rank))


def base_eval(cfg: Any) -> dict[str, Any]:
    """The pretrained model scored on the test sets: a LoRA adapter before any training (B = 0)."""
    from fedsb.core.federation import build_federation

    t0 = time.perf_counter()
    fed = build_federation(cfg)
    try:
        m = fed.objective.evaluate(fed.adapted.model, fed.task.test, cfg.eval.batch_size)
    finally:
        fed.adapted.unload()
    return {"variant": BASE, "method": "-", "rank": None, "split": "-", "seed": cfg.seed, "lr": None,
            "accuracy_macro": m["accuracy_macro"], "accuracy": m["accuracy"],
            **{f"acc_{s}": m.get(f"accuracy/{s}") for s in SOURCES}, "seconds": round(time.perf_counter() - t0, 1)}


def run_one(cfg: Any) -> dict[str, Any]:
    """One Simulator run; accuracy per set after the last round, the comm figures of summary.json. The round-0
    evaluation is off (``eval.initial = false``: it costs as much as the final one; the base model is scored once
    by ``base_eval``)."""
    from fedsb.core.federation import build_federation
    from fedsb.simulation.simulator import Simulator

    t0 = time.perf_counter()
    fed = build_federation(cfg)
    try:
        result = Simulator(cfg, fed=fed, progress=False).run()
        lr = float(fed.lr)
    finally:
        fed.adapted.unload()
    last = result.rows[-1]
    comm = result.summary["comm"]
    clients, rounds = cfg.federation.clients, len(result.rows) - 1
    up, down = comm["upload_bytes_per_client_round"], comm["download_bytes_per_client_round"]
    one_time = comm["one_time_bytes"] / clients  # the ledger's one-time total (both directions) per client
    return {
        "method": cfg.method, "rank": cfg.adapter.rank, "split": cfg.federation.partition, "seed": cfg.seed, "lr": lr,
        "accuracy_macro": last.get("accuracy_macro"), "accuracy": last.get("accuracy"),
        **{f"acc_{s}": last.get(f"accuracy/{s}") for s in SOURCES},
        "rounds_run": rounds,
        "upload_bytes_per_client_round": up, "download_bytes_per_client_round": down,
        "one_time_bytes_per_client": one_time,
        "total_bytes_per_client": rounds * (up + down) + one_time,
        "one_time": comm["one_time"], "analytic_one_time_per_client": comm["analytic_one_time_per_client"],
        "trainable_params": result.summary["trainable_params"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and std of the macro accuracy) over seeds per (variant, split), in first-seen order; no base row."""
    keys: list[tuple[str, str]] = []
    for r in (r for r in rows if r["variant"] != BASE):
        if (r["variant"], r["split"]) not in keys:
            keys.append((r["variant"], r["split"]))
    out = []
    for v, sp in keys:
        rs = [r for r in rows if r["variant"] == v and r["split"] == sp]
        m, s = _mean_std([r["accuracy_macro"] for r in rs])
        agg: dict[str, Any] = {"variant": v, "method": rs[0]["method"], "rank": rs[0]["rank"], "split": sp,
                               "seeds": len(rs), "lr": rs[0]["lr"], "accuracy_macro_mean": m, "accuracy_macro_std": s}
        for src in SOURCES:
            vals = [r[f"acc_{src}"] for r in rs if r.get(f"acc_{src}") is not None]
            agg[f"acc_{src}"] = statistics.mean(vals) if vals else None
        for k in ("upload_bytes_per_client_round", "download_bytes_per_client_round", "one_time_bytes_per_client",
                  "total_bytes_per_client", "seconds"):
            agg[k] = statistics.mean(r[k] for r in rs)
        out.append(agg)
    return out


def base_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base model's evaluation (deterministic: the first one found), as a table row for both splits."""
    b = next((r for r in rows if r["variant"] == BASE), None)
    if b is None:
        return []
    return [{"variant": BASE, "method": "-", "rank": None, "split": "both", "seeds": None, "lr": None,
             "accuracy_macro_mean": b["accuracy_macro"], "accuracy_macro_std": None,
             **{f"acc_{s}": b.get(f"acc_{s}") for s in SOURCES}}]


def verdict(summary: list[dict[str, Any]], factor: float = 10.0) -> dict[str, dict[str, Any]]:
    """Per split: does Fed-SB at its best rank (highest mean macro accuracy) beat the best baseline while sending at
    least ``factor`` x fewer total bytes per client over the run (one-time included)?"""
    out: dict[str, dict[str, Any]] = {}
    for sp in dict.fromkeys(s["split"] for s in summary):
        sb = [s for s in summary if s["split"] == sp and s["method"] == "fed-sb"]
        bl = [s for s in summary if s["split"] == sp and s["method"] not in ("fed-sb", "-")]
        if not sb or not bl:
            continue
        best_sb = max(sb, key=lambda s: s["accuracy_macro_mean"])
        best_bl = max(bl, key=lambda s: s["accuracy_macro_mean"])
        ratio = best_bl["total_bytes_per_client"] / best_sb["total_bytes_per_client"] if best_sb["total_bytes_per_client"] else math.inf
        beats = best_sb["accuracy_macro_mean"] > best_bl["accuracy_macro_mean"]
        out[sp] = {"fed_sb": best_sb["variant"], "fed_sb_macro": best_sb["accuracy_macro_mean"],
                   "baseline": best_bl["variant"], "baseline_macro": best_bl["accuracy_macro_mean"],
                   "traffic_ratio": ratio, "beats": beats, "answer": bool(beats and ratio >= factor)}
    return out


def verdict_text(v: dict[str, dict[str, Any]]) -> str:
    lines = []
    for sp, d in v.items():
        lines.append(f"- split `{sp}`: **{'yes' if d['answer'] else 'no'}** — {d['fed_sb']} macro "
                     f"{d['fed_sb_macro']:.4f} vs best baseline {d['baseline']} {d['baseline_macro']:.4f} "
                     f"({'higher' if d['beats'] else 'not higher'}), baseline sends {d['traffic_ratio']:.3g}x the "
                     f"total bytes per client (needed: >= 10x).")
    return "\n".join(lines) or "- no split has both Fed-SB and a baseline yet."


def plot(summary: list[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(s["split"] for s in summary))
    fig, axes = plt.subplots(1, max(1, len(splits)), figsize=(6 * max(1, len(splits)), 4.6), squeeze=False)
    names = list(dict.fromkeys(s["variant"] for s in summary))
    markers = "os^vDPX*"
    for ax, sp in zip(axes[0], splits, strict=False):
        for s in (s for s in summary if s["split"] == sp):
            i = names.index(s["variant"])
            ax.errorbar([s["total_bytes_per_client"]], [s["accuracy_macro_mean"]], yerr=[s["accuracy_macro_std"]],
                        marker=markers[i % len(markers)], color=f"C{i}", capsize=3, linestyle="none",
                        label=f"{s['variant']} (r={s['rank']})")
        ax.set_xscale("log")
        ax.set_xlabel("total bytes per client over the run (one-time included)")
        ax.set_ylabel("macro accuracy over the 7 sets (mean ± std over seeds)")
        ax.set_title(f"split: {sp}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 150), fontsize=7)
    fig.tight_layout()
    return fig


def command_line(args: argparse.Namespace) -> str:
    return "python benchmarks/commonsense.py " + " ".join(args.argv)


def write_all(args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any], wall: float,
              silent: bool = False) -> None:
    summary = aggregate(rows)
    table_rows = base_rows(rows) + summary
    v = verdict(summary)
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    cols: list[Column] = [("variant", "variant", str), ("rank", "r", str), ("split", "split", str), ("lr", "lr", lambda x: f"{x:.2g}")]
    cols += [(f"acc_{s}", s, pct) for s in SOURCES]
    cols += [("accuracy_macro_mean", "macro", pct), ("accuracy_macro_std", "± std", pct), ("seeds", "seeds", str),
             ("upload_bytes_per_client_round", "up B/client/round", lambda x: f"{x:,.0f}"),
             ("download_bytes_per_client_round", "down B/client/round", lambda x: f"{x:,.0f}"),
             ("one_time_bytes_per_client", "one-time B/client", lambda x: f"{x:,.0f}"),
             ("total_bytes_per_client", "total B/client", lambda x: f"{x:,.0f}"),
             ("seconds", "s/run", lambda x: f"{x:.0f}")]
    seeds = sorted({r["seed"] for r in rows if r["variant"] != BASE})
    setting = (f"SmolLM2-135M-Instruct, preset {PRESET}{' (--quick sizes)' if meta['quick'] else ''}, "
               f"{meta['clients']} clients x {meta['rounds']} rounds x {meta.get('local_steps', '?')} local steps of batch "
               f"{meta.get('batch_size', '?')}, {meta.get('test_per_source', '?')} test examples per set; Fed-SB r={meta['fedsb_ranks']}, LoRA baselines "
               f"r={meta['lora_rank']}; seeds {seeds}")
    lr_lines = "\n".join(f"- {k}: {x['lr']:.3g} ({x['how']})" for k, x in meta.get("lr", {}).items())
    parts = meta.get("parts", [])
    timing = (f"Merged from {', '.join(p['name'] for p in parts)}; worker wall times "
              f"{', '.join(format(p['wall_seconds'] / 60, '.1f') for p in parts)} min." if parts
              else f"Wall time of this invocation {wall / 60:.1f} min ({sum(r['variant'] != BASE for r in rows)} runs).")
    regen = "; then ".join(f"`{p['command']}`" for p in parts if p.get("command")) + ("; then " if parts else "")
    regen += f"`{command_line(args)}`"
    md = (f"# Federated commonsense instruction tuning (SmolLM2-135M)\n\n{setting}.\n\nRegenerate: {regen}\n\n"
          + md_table(table_rows, cols)
          + "\nAccuracies in % on the test sets (likelihood scoring); `macro` = mean over the 7 sets. The `base model` "
          "row is the pretrained model (a LoRA adapter at B = 0) scored once on the same test sets. Bytes per client: upload/download per round from summary.json's comm figures "
          "(fedsb's wire dtype), one-time = the ledger's one-time bytes (Fed-SB's B/A broadcast and init upload) / "
          "clients; total = rounds x (up + down) + one-time. Fed-SB's one-time bytes are its communication-efficient init "
          "(`init.source = federated-lowrank`: rank-r factors of each client's gradient sum at 8 bits) and the 4-bit B/A "
          "broadcast.\n\n"
          "## Does Fed-SB at its best rank beat the best baseline at >= 10x less traffic?\n\n"
          f"{verdict_text(v)}\n\n## Learning rates\n\nChosen on a validation slice of the training pool (seed 0, "
          f"split source), never on the test sets:\n\n{lr_lines or '- defaults'}\n\n{timing}\n\n"
          f"{machine_line(meta['machine'])}\n")
    paths = write_results(args.name, rows, md, {**meta, "summary": table_rows, "verdict": v, "wall_seconds": round(wall, 1),
                                                "command": command_line(args)})
    if summary:
        save_png(plot(summary, setting), args.name)
    if not silent:
        print(md)
        print("wrote", ", ".join(str(p) for p in paths))


def choose_lrs(args: argparse.Namespace, vs: dict[str, tuple[str, int]], meta: dict[str, Any], log: list[dict[str, Any]],
               save: Any) -> dict[str, float]:
    """variant -> learning rate: from --lr-from, or the best validation macro accuracy of the sweep (seed 0, source)."""
    chosen: dict[str, dict[str, Any]] = dict(meta.get("lr", {}))
    if args.lr_from:
        d = json.loads((RESULTS / f"{args.lr_from}.json").read_text())
        chosen.update(d.get("lr", {}))
    mults = [float(x) for x in args.tune_lr.split(",")] if args.tune_lr not in ("off", "") else []
    for v, (method, rank) in vs.items():
        if v in chosen:
            continue
        d = default_lr(method, rank)
        if not mults:
            chosen[v] = {"lr": d, "how": "method default, not tuned"}
            continue
        scores = {}
        for m in mults:
            done = next((t for t in log if t["variant"] == v and t["multiplier"] == m), None)
            if done is None:
                cfg = build_config(method, rank, "source", 0, args.data, lr=d * m, validation=True, quick=args.quick)
                r = run_one(cfg)
                done = {"variant": v, "multiplier": m, "lr": d * m, "validation_macro": r["accuracy_macro"],
                        "seconds": r["seconds"]}
                log.append(done)
                print(f"tune {v:12s} lr {d * m:.3g}: validation macro {r['accuracy_macro']:.4f} ({r['seconds']:.0f}s)", flush=True)
                save()
            scores[m] = done["validation_macro"]
        best = max(mults, key=lambda m: (scores[m], -abs(math.log(m))))  # ties: closest to the default
        chosen[v] = {"lr": d * best, "how": f"{best:g} x default {d:.3g}; validation macro "
                     + ", ".join(f"{m:g}x {scores[m]:.3f}" for m in mults)}
    meta["lr"] = chosen
    return {v: chosen[v]["lr"] for v in vs}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the LLM-Adapters commonsense folder")
    ap.add_argument("--fedsb-ranks", nargs="+", type=int, default=None, help=f"default {FEDSB_RANKS}")
    ap.add_argument("--lora-rank", type=int, default=None, help=f"default {LORA_RANK}")
    ap.add_argument("--splits", nargs="+", default=None, choices=SPLITS, help="default source iid (source with --quick)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 (0 with --quick)")
    ap.add_argument("--tune-lr", default=None, help=f"lr multipliers to sweep, or 'off' (default {TUNE_LR}; off with --quick)")
    ap.add_argument("--lr-from", default=None, help="reuse the learning rates chosen in results/NAME.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the whole script in minutes on a CPU")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="result name (default commonsense, commonsense_quick with --quick)")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs in results/<name>.json, run the rest")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="run only these variants (names as in the table, e.g. fed-sb-r16 fedit); for parallel workers")
    ap.add_argument("--no-base", action="store_true", help="do not score the base model (another worker does)")
    ap.add_argument("--merge", nargs="*", default=[], help="combine the rows of these earlier result names (no new runs)")
    args = ap.parse_args(argv)
    args.argv = argv
    q = args.quick
    fedsb_ranks = args.fedsb_ranks or ([QUICK_RANK] if q else FEDSB_RANKS)
    lora_rank = args.lora_rank or (QUICK_RANK if q else LORA_RANK)
    args.splits = args.splits or (["source"] if q else SPLITS)
    args.seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1])
    args.tune_lr = args.tune_lr or ("off" if q else TUNE_LR)
    args.name = args.name or ("commonsense_quick" if q else "commonsense")
    if not args.merge and not Path(args.data).is_dir():
        sys.exit(f"error: {args.data} not found; pass --data /path/to/commonsense (the LLM-Adapters commonsense folder)")
    if args.lr_from and not (RESULTS / f"{args.lr_from}.json").is_file():
        sys.exit(f"error: results/{args.lr_from}.json not found; run the learning-rate sweep first or drop --lr-from")

    import torch

    quiet()
    torch.set_num_threads(args.threads)
    cfg0 = build_config("fed-sb", fedsb_ranks[0], args.splits[0], 0, args.data, quick=q)
    meta: dict[str, Any] = {"machine": machine_info(args.threads), "quick": q, "fedsb_ranks": fedsb_ranks,
                            "lora_rank": lora_rank, "clients": cfg0.federation.clients, "rounds": cfg0.federation.rounds,
                            "local_steps": cfg0.train.local_steps, "batch_size": cfg0.train.batch_size,
                            "test_per_source": cfg0.task.max_test_per_source,
                            "data": Path(args.data).name, "tune_log": []}
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    if args.merge:
        meta["parts"] = []
        sizes = ("quick", "lora_rank", "clients", "rounds", "local_steps", "batch_size", "test_per_source")
        first: dict[str, Any] | None = None
        for part in args.merge:
            d = json.loads((RESULTS / f"{part}.json").read_text())
            if first is not None and any(d.get(k) != first.get(k) for k in sizes):
                diff = ", ".join(f"{k} {first.get(k)} vs {d.get(k)}" for k in sizes if d.get(k) != first.get(k))
                sys.exit(f"error: results/{part}.json was run with other settings ({diff}); merge parts of one benchmark")
            first = first or d
            have = {(r["variant"], r["split"], r["seed"]) for r in rows}
            for r in d["rows"]:
                key = (r["variant"], r["split"], r["seed"])
                if r["variant"] == BASE and any(x["variant"] == BASE for x in rows):
                    continue  # one base evaluation (deterministic) is enough
                if key in have:
                    sys.exit(f"error: {r['variant']} split {r['split']} seed {r['seed']} is in two parts; merge disjoint parts")
                rows.append(r)
            meta["parts"].append({"name": part, "wall_seconds": d["wall_seconds"], "machine": d["machine"],
                                  "command": d.get("command")})
            meta["lr"] = {**d.get("lr", {}), **meta.get("lr", {})}
            meta["tune_log"] += d.get("tune_log", [])
            for k in ("quick", "lora_rank", "clients", "rounds", "local_steps", "batch_size", "test_per_source"):
                meta[k] = d.get(k, "?")
            meta["fedsb_ranks"] = sorted(set(meta.get("fedsb_ranks", [])) | set(d["fedsb_ranks"]))
        meta["machine"] = meta["parts"][0]["machine"]
        write_all(args, rows, meta, max(p["wall_seconds"] for p in meta["parts"]))
        return
    prev_wall = 0.0
    if args.resume and (RESULTS / f"{args.name}.json").is_file():
        d = json.loads((RESULTS / f"{args.name}.json").read_text())
        rows = [r for r in d["rows"] if r["seed"] in args.seeds or r["variant"] == BASE]
        meta["lr"], meta["tune_log"] = d.get("lr", {}), d.get("tune_log", [])
        prev_wall = sum(r["seconds"] for r in rows) + sum(t["seconds"] for t in meta["tune_log"])
        print(f"resuming {args.name}: {len(rows)} finished runs kept", flush=True)

    def save() -> None:  # after every run: a killed worker keeps what it finished
        write_all(args, rows, meta, prev_wall + time.perf_counter() - t_all, silent=True)

    vs = variants(fedsb_ranks, lora_rank)
    if args.variants:
        unknown = sorted(set(args.variants) - set(vs))
        if unknown:
            sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(vs)}")
        vs = {v: mr for v, mr in vs.items() if v in args.variants}
    if not args.no_base and not any(r["variant"] == BASE for r in rows):
        rows.append(base_eval(build_config("fedit", lora_rank, args.splits[0], 0, args.data, quick=q, threads=args.threads)))
        print(f"base model: macro {rows[-1]['accuracy_macro']:.4f} ({rows[-1]['seconds']:.0f}s)", flush=True)
        save()
    lrs = choose_lrs(args, vs, meta, meta["tune_log"], save)
    done = {(r["variant"], r["split"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for split in args.splits:
            for v, (method, rank) in vs.items():
                if (v, split, seed) in done:
                    continue
                r = {"variant": v, **run_one(build_config(method, rank, split, seed, args.data, lr=lrs[v], quick=q,
                                                          threads=args.threads))}
                rows.append(r)
                print(f"{v:12s} {split:6s} seed={seed}: macro {r['accuracy_macro']:.4f}, "
                      f"{r['total_bytes_per_client']:,.0f} B/client, {r['seconds']:.0f}s",
                      flush=True)
                save()
    write_all(args, rows, meta, prev_wall + time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
