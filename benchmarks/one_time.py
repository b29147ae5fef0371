"""Fed-SB's whole traffic, one-time costs included, for each format of the one-time B/A broadcast (issue 17).

On the default task (`fedsb run`: all-MiniLM-L6-v2, intent_recognition, 3 clients, 5 rounds, r = 16, the
default init ``federated-lowrank`` at 8 bits), for ``init.broadcast_bits`` in 32 / 16 / 8 / 4 and FedIT at the
same rank (its default learning rate): final accuracy over seeds and every byte both directions carried over the
run, split into the init upload, the B/A broadcast and the rounds. ``--split validation`` scores on a held-out
slice of the training pool instead of the test split: choices (the default format, init knobs) are made there.

One run at a time, one torch thread; results are rewritten after every run, and a rerun skips the runs already
in ``benchmarks/results/one_time.json`` (``--fresh`` starts over).

    python benchmarks/one_time.py                                  # test split, 3 seeds, all variants
    python benchmarks/one_time.py --split validation --variants b32 b8 b4 b8-up4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_info, machine_line, quiet, write_results  # noqa: E402

NAME = "one_time"
# variant -> (method, init overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "b32": ("fed-sb", {"broadcast_bits": 32}),
    "b16": ("fed-sb", {"broadcast_bits": 16}),
    "b8": ("fed-sb", {"broadcast_bits": 8}),
    "b4": ("fed-sb", {"broadcast_bits": 4}),
    "b8-up4": ("fed-sb", {"broadcast_bits": 8, "lowrank_bits": 4}),  # init factors at 4 bits (r' = r)
    "b4-up4": ("fed-sb", {"broadcast_bits": 4, "lowrank_bits": 4}),
    "fedit": ("fedit", {}),
}
DEFAULT_VARIANTS = ["b32", "b16", "b8", "b4", "fedit"]


def config(variant: str, seed: int, split: str) -> Any:
    from fedsb.config import RunConfig, from_dict, validate

    method, init = VARIANTS[variant]
    rounds = RunConfig().federation.rounds
    # Only the final accuracy is reported: evaluate once, after the last round (training is unaffected).
    return validate(from_dict({"method": method, "seed": seed, "init": init, "train": {"threads": 1},
                               "eval": {"every": rounds}, "task": {"evaluate_on": split}}))


def run_one(variant: str, seed: int, split: str) -> dict[str, Any]:
    import torch

    from fedsb.simulation.simulator import Simulator

    torch.set_num_threads(1)
    cfg = config(variant, seed, split)
    res = Simulator(cfg, progress=False).run()
    s, c = res.summary, res.comm
    return {
        "variant": variant, "method": cfg.method, "seed": seed, "split": split, "rank": cfg.adapter.rank,
        "broadcast_bits": cfg.init.broadcast_bits if res.fed.method.gradient_init else None,
        "init_source": cfg.init.source if res.fed.method.gradient_init else None,
        "lowrank_bits": cfg.init.lowrank_bits if res.fed.method.gradient_init else None,
        "accuracy": s["final_metrics"]["accuracy"],
        "init_upload_bytes": c.one_time_upload_bytes,
        "broadcast_bytes": c.one_time_download_bytes,
        "one_time_bytes": c.one_time_upload_bytes + c.one_time_download_bytes,
        "round_upload_bytes": c.upload_bytes,
        "round_download_bytes": c.download_bytes,
        "all_bytes": c.total_bytes,
        "wall_seconds": s["wall_seconds"],
    }


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        fedit = [r["all_bytes"] for r in rows if r["split"] == split and r["variant"] == "fedit"]
        fedit_acc = [r["accuracy"] for r in rows if r["split"] == split and r["variant"] == "fedit"]
        for variant in [v for v in VARIANTS if any(r["variant"] == v and r["split"] == split for r in rows)]:
            vs = [r for r in rows if r["variant"] == variant and r["split"] == split]
            acc, std = mean_std([r["accuracy"] for r in vs])
            agg = {"split": split, "variant": variant, "method": vs[0]["method"], "seeds": len(vs),
                   "broadcast_bits": vs[0]["broadcast_bits"], "lowrank_bits": vs[0]["lowrank_bits"],
                   "accuracy": acc, "accuracy_std": std}
            for k in ("init_upload_bytes", "broadcast_bytes", "one_time_bytes", "round_upload_bytes", "round_download_bytes", "all_bytes"):
                agg[k] = statistics.fmean(r[k] for r in vs)
            agg["rounds_bytes"] = agg["round_upload_bytes"] + agg["round_download_bytes"]
            if fedit:
                agg["x_fedit"] = agg["all_bytes"] / statistics.fmean(fedit)
                agg["goal"] = bool(agg["x_fedit"] <= 0.1 and acc >= statistics.fmean(fedit_acc)) if variant != "fedit" else None
            out.append(agg)
    return out


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f}"


def markdown(aggs: list[dict[str, Any]], machine: dict[str, Any], cmd: str) -> str:
    lines = ["# Fed-SB's whole traffic with a quantised one-time B/A broadcast", "",
             f"Command: `{cmd}`", "", machine_line(machine), "",
             "Default task (`fedsb run`): all-MiniLM-L6-v2, intent_recognition, 3 clients (Dirichlet 0.5), 5 rounds x 10 local "
             "steps, r = 16 (24 adapted 384x384 layers), init `federated-lowrank` (r' = r, 8-bit factors unless the variant "
             "says otherwise). FedIT at r = 16 and its default learning rate. Bytes: every tensor byte over the run, both "
             "directions, all clients (MB = 1e6 B), from the run's ledger; they are the same for every seed. Accuracy: "
             "mean (std) over seeds.", ""]
    for split in dict.fromkeys(a["split"] for a in aggs):
        lines += [f"## {split} split", "",
                  "| variant | B/A bits | init bits | seeds | accuracy | init upload | B/A broadcast | rounds (up+down) | total | x FedIT | goal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in (a for a in aggs if a["split"] == split):
            goal = {True: "yes", False: "no", None: ""}[a.get("goal")]
            ratio = f"{a['x_fedit']:.3f}" if "x_fedit" in a else "-"
            lines.append(f"| {a['variant']} | {a['broadcast_bits'] or '-'} | {a['lowrank_bits'] or '-'} | {a['seeds']} | "
                         f"{100 * a['accuracy']:.1f} ({100 * a['accuracy_std']:.1f}) | {mb(a['init_upload_bytes'])} | "
                         f"{mb(a['broadcast_bytes'])} | {mb(a['rounds_bytes'])} | {mb(a['all_bytes'])} | {ratio} | {goal} |")
        lines.append("")
    lines += ["Goal: total <= 0.1x FedIT's at equal or better mean accuracy.", ""]
    return "\n".join(lines)


def llm_preset_table(runs: list[tuple[str, Path, str]]) -> None:
    """``llm_preset_one_time.{md,json}`` from finished ``fedsb run --preset llm-quickstart`` run directories
    (``label``, run dir, the command that made it): accuracy before/after training and every byte, from summary.json."""
    from common import atomic_write

    rows = []
    for label, run_dir, command in runs:
        s = json.loads((run_dir / "summary.json").read_text())
        c, one = s["comm"], s["comm"]["one_time"]
        cfg = json.loads(json.dumps(_toml(run_dir / "config.toml")["init"]))
        rows.append({"label": label, "command": command, "init": cfg, "accuracy_before": s["initial_metrics"]["accuracy"],
                     "accuracy_after": s["final_metrics"]["accuracy"], "init_upload_bytes": one["upload_bytes_total"],
                     "broadcast_bytes": one["download_bytes_total"], "one_time_bytes": c["one_time_bytes"],
                     "rounds_bytes": c["upload_bytes_total"] + c["download_bytes_total"], "all_bytes": c["all_bytes_total"],
                     "wall_seconds": s["wall_seconds"]})
    base = rows[0]["one_time_bytes"]
    lines = ["# The llm-quickstart preset: one-time traffic before and after the communication-efficient init", "",
             "SmolLM2-135M-Instruct, Fed-SB r = 16 on 210 layers, 3 IID clients, 3 rounds x 4 local steps, 2-digit addition; "
             "7-way likelihood accuracy on 100 held-out problems (test split), before training (round 0, right after the "
             "init) and after the last round. Bytes: all clients, from summary.json. One process, one torch thread, on "
             "the shared 2-core machine.", "",
             "| run | init.source | B/A bits | accuracy at round 0 | final accuracy | init upload | B/A broadcast | one-time | one-time / first | rounds (up+down) | total | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['init']['source']} | {r['init'].get('broadcast_bits', 32)} | {r['accuracy_before']:.2f} | "
                     f"{r['accuracy_after']:.2f} | {r['init_upload_bytes']:,} | {r['broadcast_bytes']:,} | {r['one_time_bytes']:,} | "
                     f"{r['one_time_bytes'] / base:.4f} | {r['rounds_bytes']:,} | {r['all_bytes']:,} | {r['wall_seconds']:.0f} |")
    lines += ["", "Commands:", ""] + [f"- {r['label']}: `{r['command']}`" for r in rows] + [""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "llm_preset_one_time.md", "\n".join(lines).encode())
    atomic_write(RESULTS / "llm_preset_one_time.json", (json.dumps({"machine": machine_info(1), "rows": rows}, indent=2) + "\n").encode())
    print("\n".join(lines))


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--fresh", action="store_true", help="ignore the runs already in benchmarks/results/one_time.json")
    p.add_argument("--llm-runs", nargs="+", metavar="LABEL=RUN_DIR=COMMAND",
                   help="only write llm_preset_one_time.{md,json} from finished llm-quickstart run directories")
    args = p.parse_args(argv)
    if args.llm_runs:
        llm_preset_table([(lab, Path(d), c) for lab, d, c in (x.split("=", 2) for x in args.llm_runs)])
        return
    quiet()
    cmd = "python benchmarks/one_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = RESULTS / f"{NAME}.json"
    old = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
    rows: list[dict[str, Any]] = old.get("rows", [])
    cmds = [c for c in old.get("commands", []) if c != cmd] + [cmd]
    machine = machine_info(1)
    for seed in args.seeds:
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed and r["split"] == args.split for r in rows):
                continue
            t0 = time.perf_counter()
            row = run_one(variant, seed, args.split)
            rows.append(row)
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            aggs = aggregate(rows)
            write_results(NAME, rows, markdown(aggs, machine, " ; ".join(cmds)),
                          {"machine": machine, "commands": cmds, "summary": aggs})
    print(markdown(aggregate(rows), machine, " ; ".join(cmds)))


if __name__ == "__main__":
    main()
