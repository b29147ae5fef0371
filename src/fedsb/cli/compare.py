"""``fedsb compare [CONFIG] --methods ... --fedsb-ranks 4,8,16 --lora-rank 8 --seeds 3``.

Runs every method (Fed-SB at each of its ranks, the LoRA baselines at one rank) on the same model, data
split, client shards, local budget and seeds, and reports accuracy against communication per client per
round: ``compare.md``, ``compare.csv``, ``compare.json``, ``compare.png`` (the Pareto plot) and one run
directory per (method, rank, seed) with its ``summary.json``.

The base model is loaded once. Training never touches the frozen base weights (FedEx-LoRA/FLoRA fold
their updates into a separate float32 residual inside the adapter layer), so after each run the adapters
are unloaded, the task head is reset, and the next method's adapters are injected into the same model.
Within one seed every method sees the same train/test split and the same shards; the classifier head is
drawn from the seed (its own generator), so all methods also start from the same head.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import io
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from tqdm.auto import tqdm

from fedsb.adapters.model import AdaptedModel
from fedsb.cli.args import split_args
from fedsb.config import RunConfig, load_toml
from fedsb.core.federation import assemble_federation, model_kind
from fedsb.errors import FedsbError, UsageError
from fedsb.io.compare_plot import plot_pareto
from fedsb.io.rundir import RunDir, atomic_write_text, write_json
from fedsb.methods import METHODS, import_plugins, plugin_modules
from fedsb.models.load import load_model
from fedsb.simulation.simulator import Simulator
from fedsb.tasks import load_task
from fedsb.tasks.base import TaskData

COMPARE_FLAGS = ("--overwrite", "--resume", "--no-progress", "--debug")
COMPARE_KEYS = ("methods", "fedsb-ranks", "lora-rank", "seeds", "workers", "tune-lr", "lr-from")
DEFAULT_METHODS = tuple(METHODS)
DEFAULT_FEDSB_RANKS = (4, 8, 16)
DEFAULT_LORA_RANK = 8
DEFAULT_SEEDS = 3
# Keys compare sets itself: a plain override would be silently replaced, so refuse it with the right flag.
REPLACED_KEYS = {"method": "--methods", "rank": "--fedsb-ranks / --lora-rank", "adapter.rank": "--fedsb-ranks / --lora-rank",
                 "task.evaluate_on": "--tune-lr (which scores on the validation slice; the table is always on test)"}


@dataclass
class CompareSpec:
    """What to compare (everything else comes from the run config)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    fedsb_ranks: list[int] = field(default_factory=lambda: list(DEFAULT_FEDSB_RANKS))
    lora_rank: int = DEFAULT_LORA_RANK
    seeds: int = DEFAULT_SEEDS
    workers: int | None = None  # None = one per core (at most 4)
    #: Learning-rate multipliers of each method's default to try on a validation slice of the training data
    #: (``task.evaluate_on = validation``, first seed) before the runs; the best one is used. Empty = defaults.
    tune_lr: list[float] = field(default_factory=list)
    #: A ``tuning.json`` written by an earlier ``--tune-lr`` comparison: reuse its chosen rates (another split of
    #: the same task, say) instead of tuning again. None = no reuse.
    lr_from: str | None = None

    def variants(self) -> list[tuple[str, int]]:
        """(method, rank) pairs in table order."""
        out: list[tuple[str, int]] = []
        for m in self.methods:
            out += [(m, r) for r in self.fedsb_ranks] if METHODS[m].core_rank else [(m, self.lora_rank)]
        return out


def _int_list(key: str, text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--{key} takes comma-separated integers, e.g. --{key} 4,8,16; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise UsageError(f"--{key} needs positive integers, e.g. --{key} 4,8,16; got {text!r}")
    return vals


def parse_spec(values: dict[str, str]) -> CompareSpec:
    spec = CompareSpec()
    if "methods" in values:
        methods = [m.strip() for m in values["methods"].split(",") if m.strip()]
        if methods == ["all"]:
            methods = list(METHODS)
        for m in methods:
            if m not in METHODS:
                close = difflib.get_close_matches(m, list(METHODS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"--methods: unknown method {m!r}{hint}; choose from {','.join(METHODS)}")
        if not methods or len(set(methods)) != len(methods):
            raise UsageError(f"--methods needs distinct method names, e.g. --methods fed-sb,fedit; got {values['methods']!r}")
        spec.methods = methods
    if "fedsb-ranks" in values:
        spec.fedsb_ranks = sorted(set(_int_list("fedsb-ranks", values["fedsb-ranks"])))
    if "lora-rank" in values:
        ranks = _int_list("lora-rank", values["lora-rank"])
        if len(ranks) != 1:
            raise UsageError(f"--lora-rank takes one rank, e.g. --lora-rank 8; got {values['lora-rank']!r}")
        spec.lora_rank = ranks[0]
    if "seeds" in values:
        seeds = _int_list("seeds", values["seeds"])
        if len(seeds) != 1:
            raise UsageError(f"--seeds takes a number of seeds, e.g. --seeds 3; got {values['seeds']!r}")
        spec.seeds = seeds[0]
    if "tune-lr" in values:
        try:
            factors = sorted({float(v) for v in values["tune-lr"].split(",") if v.strip()})
        except ValueError:
            raise UsageError(f"--tune-lr takes comma-separated multipliers of each method's default rate, e.g. --tune-lr 0.3,1,3; "
                             f"got {values['tune-lr']!r}") from None
        if not factors or any(not 0 < f < 1e3 for f in factors):
            raise UsageError(f"--tune-lr needs positive multipliers, e.g. --tune-lr 0.3,1,3; got {values['tune-lr']!r}")
        spec.tune_lr = factors
    if "lr-from" in values:
        if "tune-lr" in values:
            raise UsageError("--lr-from reuses the rates an earlier --tune-lr chose; pass one of the two, not both")
        spec.lr_from = values["lr-from"]
    if "workers" in values:
        workers = _int_list("workers", values["workers"])
        if len(workers) != 1:
            raise UsageError(f"--workers takes one number, e.g. --workers 2; got {values['workers']!r}")
        spec.workers = workers[0]
    return spec


def split_compare_args(tokens: list[str]) -> tuple[str | None, set[str], CompareSpec, list[tuple[str, str]]]:
    """``fedsb compare`` arguments: config path, flags, the comparison spec and config overrides."""
    config, opts, pairs = split_args(tokens, COMPARE_FLAGS)
    flags = {f"--{k}" for k in opts}
    own = {k: v for k, v in pairs if k in COMPARE_KEYS}
    overrides = [(k, v) for k, v in pairs if k not in COMPARE_KEYS]
    for k, _ in overrides:
        if k in REPLACED_KEYS:
            raise UsageError(f"compare sets --{k} per run; use {REPLACED_KEYS[k]} instead")
    return config, flags, parse_spec(own), overrides


def eval_every_given(config: str | None, overrides: list[tuple[str, str]]) -> bool:
    """Whether the user chose ``eval.every`` (compare otherwise evaluates after the last round only)."""
    if any(k == "eval.every" for k, _ in overrides):
        return True
    if not config:
        return False
    return "every" in load_toml(config).get("eval", {})


# --- shared model --------------------------------------------------------------------------------------
def head_linears(adapted: AdaptedModel) -> list[tuple[str, nn.Linear]]:
    return [(f"{n}.{s}" if s else n, m) for n, h in sorted(adapted.head_modules.items())
            for s, m in h.named_modules() if isinstance(m, nn.Linear)]


def reset_head(adapted: AdaptedModel, pristine: dict[str, torch.Tensor], seed: int, std: float) -> None:
    """Restore the head as loaded, then draw its linear layers from ``seed`` (normal(0, std), zero bias),
    so every method of one seed starts from the same head and seeds differ as separate runs would."""
    if not pristine:
        return
    adapted.set_state(pristine)
    with torch.no_grad():
        for i, (_, lin) in enumerate(head_linears(adapted)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * i + 17)
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
            if lin.bias is not None:
                lin.bias.zero_()


@dataclass
class RunResult:
    method: str
    rank: int
    seed: int
    summary: dict[str, Any]
    run_dir: Path


class SharedModel:
    """One base-model load serving every (method, rank, seed) run of a comparison, one run at a time."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.kind = model_kind(cfg)
        self.tasks: dict[tuple[int, bool], TaskData] = {}
        task = self.task(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.loaded = load_model(cfg.model.name, self.kind, max(2, len(task.labels)), cfg.model.dtype, cfg.seed)
        self.std = float(getattr(self.loaded.model.config, "initializer_range", 0.02) or 0.02)
        self.pristine: dict[str, torch.Tensor] | None = None

    def task(self, seed: int, validation: bool = False) -> TaskData:
        """The task split of ``seed`` (the held-out split is drawn from the seed, as in ``fedsb run``); with
        ``validation``, scored on a slice of the training pool instead (learning-rate tuning)."""
        if (seed, validation) not in self.tasks:
            self.tasks = {}  # one split at a time: runs are ordered seed-major
            task_cfg = self.cfg.task.model_copy(update={"evaluate_on": "validation" if validation else "test"})
            task = load_task(task_cfg, self.kind, seed)
            if not task.train or not task.test:
                raise FedsbError(f"task {task.name!r} has {len(task.train)} training and {len(task.test)} test examples; "
                                 "both must be > 0")
            self.tasks[(seed, validation)] = task
        return self.tasks[(seed, validation)]

    def run(self, method: str, rank: int, seed: int, run_path: Path, lr: float | None = None,
            validation: bool = False) -> RunResult:
        cfg = copy.deepcopy(self.cfg)
        cfg.method, cfg.adapter.rank, cfg.seed, cfg.out = method, rank, seed, str(run_path)
        if lr is not None:
            cfg.train.lr = lr
        if validation:
            cfg.task.evaluate_on = "validation"
        run_dir = RunDir.create(run_path, overwrite=True)
        fed = assemble_federation(cfg, self.loaded, self.task(seed, validation))
        try:
            if self.pristine is None:
                self.pristine = fed.adapted.get_state(fed.adapted.head_state_names())
            reset_head(fed.adapted, self.pristine, seed, self.std)
            torch.manual_seed(seed)  # dropout draws: the same stream for every method of this seed
            result = Simulator(cfg, fed=fed, progress=False).run()
            summary = {**result.summary, "lr": fed.lr, "head_lr": fed.head_lr, "seed": seed}
        finally:
            fed.adapted.unload()
        run_dir.write_config(cfg.to_dict())
        run_dir.write_metrics(result.rows)
        run_dir.write_summary(summary)
        return RunResult(method, rank, seed, summary, run_dir.path)


Job = tuple[int, str, int, int, str, float | None, bool]  # (index, method, rank, seed, run dir, lr or None, validation)


def _worker(cfg: RunConfig, jobs: Any, results: Any, plugins: list[str]) -> None:
    """A worker process: load the model once, then take jobs until a ``None`` arrives."""
    from fedsb.environment import quiet_libraries

    quiet_libraries()
    try:
        import_plugins(plugins)  # methods registered outside fedsb, as in the parent
        shared = SharedModel(cfg)
        while (job := jobs.get()) is not None:
            i, method, rank, seed, path, lr, validation = job
            r = shared.run(method, rank, seed, Path(path), lr, validation)
            results.put(("ok", i, r.method, r.rank, r.seed, r.summary, str(r.run_dir)))
    except Exception as e:  # reported to the parent, which raises it as one line
        results.put(("error", f"{type(e).__name__}: {e}" if not isinstance(e, FedsbError) else str(e)))


def finished_run(job: Job) -> RunResult | None:
    """The result of ``job`` if an earlier, interrupted comparison completed it (``--resume``): its run directory
    holds a ``summary.json`` (written last) for the same method, rank, seed and learning rate."""
    _, method, rank, seed, path, lr, _ = job
    try:
        summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (isinstance(summary, dict) and summary.get("method") == method and summary.get("seed") == seed
            and summary.get("rank") == rank and (lr is None or math.isclose(float(summary.get("lr") or 0.0), lr)))
    return RunResult(method, rank, seed, summary, Path(path)) if same else None


def run_or_reuse(cfg: RunConfig, jobs: list[Job], workers: int, on_result: Callable[[RunResult], None],
                 resume: bool) -> int:
    """:func:`run_jobs`, after handing ``on_result`` the jobs an interrupted comparison finished (``resume``);
    returns how many were reused."""
    todo = []
    for j in jobs:
        done = finished_run(j) if resume else None
        if done is not None:
            on_result(done)
        else:
            todo.append(j)
    if todo:
        run_jobs(cfg, todo, min(workers, len(todo)), on_result)
    return len(jobs) - len(todo)


def run_jobs(cfg: RunConfig, jobs: list[Job], workers: int, on_result: Callable[[RunResult], None]) -> None:
    """Run ``jobs`` in this process (``workers == 1``) or in ``workers`` spawned processes."""
    if workers == 1:
        shared = SharedModel(cfg)
        for _, method, rank, seed, path, lr, validation in jobs:
            on_result(shared.run(method, rank, seed, Path(path), lr, validation))
        return
    ctx = mp.get_context("spawn")  # fresh interpreters: no fork of a process that already runs torch threads
    job_q, res_q = ctx.Queue(), ctx.Queue()
    for j in jobs:
        job_q.put(j)
    for _ in range(workers):
        job_q.put(None)
    procs = [ctx.Process(target=_worker, args=(cfg, job_q, res_q, plugin_modules()), daemon=True) for _ in range(workers)]
    for pr in procs:
        pr.start()
    try:
        done = 0
        while done < len(jobs):
            try:
                msg = res_q.get(timeout=5)
            except queue.Empty:
                if not any(pr.is_alive() for pr in procs):
                    raise FedsbError("all compare workers exited early (out of memory?); retry with --workers 1") from None
                continue
            if msg[0] == "error":
                raise FedsbError(f"a compare run failed: {msg[1]}")
            _, _, method, rank, seed, summary, path = msg
            on_result(RunResult(method, rank, seed, summary, Path(path)))
            done += 1
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.terminate()
        for pr in procs:
            pr.join(timeout=10)


def accuracy_of(summary: dict[str, Any]) -> float:
    final = summary.get("final_metrics", {})
    if "accuracy" in final:
        return float(final["accuracy"])
    keys = sorted(k for k in final if k.startswith("acc"))
    if not keys:
        raise FedsbError(f"run {summary.get('method')} r={summary.get('rank')} reported no accuracy; compare needs one")
    return float(final[keys[0]])


# --- aggregation of seeds into table rows -------------------------------------------------------------------
def summarise(results: list[RunResult], spec: CompareSpec) -> list[dict[str, Any]]:
    """One row per (method, rank): accuracy mean/std over seeds and the per-client-per-round traffic."""
    rows = []
    for method, rank in spec.variants():
        runs = [r for r in results if r.method == method and r.rank == rank]
        if not runs:
            continue
        accs = [accuracy_of(r.summary) for r in runs]
        c = runs[0].summary["comm"]
        one = c.get("one_time", {})
        rows.append({
            "method": method,
            "rank": rank,
            "seeds": len(runs),
            "accuracy_mean": statistics.fmean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracies": accs,
            "initial_accuracy_mean": statistics.fmean(
                [r.summary.get("initial_metrics", {}).get("accuracy", float("nan")) for r in runs]),  # nan: eval.initial off
            "upload_params": c["upload_params_per_client_round"],
            "download_params": c["download_params_per_client_round"],
            "upload_bytes": c["upload_bytes_per_client_round"],
            "download_bytes": c["download_bytes_per_client_round"],
            "one_time_bytes": int(one.get("init_upload_bytes_per_client", 0) + one.get("broadcast_bytes_per_client", 0)),
            "trainable_params": runs[0].summary.get("trainable_params"),
            "lr": runs[0].summary.get("lr"),
            # Each client's model on its own test share (the test set dealt by each client's label mix), and the
            # worst client's; for a personalised method the model is the client's own.
            "own_share_accuracy_mean": _mean_final(runs, "personal_accuracy"),
            "worst_client_accuracy_mean": _mean_final(runs, "personal_accuracy_min"),
            "personalised": METHODS[method].personalised,
            "wall_seconds_mean": statistics.fmean(r.summary["wall_seconds"] for r in runs),
        })
    return rows


def _mean_final(runs: list[RunResult], key: str) -> float | None:
    vals = [r.summary.get("final_metrics", {}).get(key) for r in runs]
    return statistics.fmean(float(v) for v in vals if v is not None) if all(v is not None for v in vals) else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_params(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{n:.0f}"


TABLE_HEADERS = ["method", "rank", "lr", "seeds", "accuracy (mean ± std)", "own share", "worst client", "up params", "down params", "up bytes", "down bytes",
                 "one-time bytes", "wall s"]


def table_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["method"] + (" (personal)" if row.get("personalised") else ""), str(row["rank"]),
        "-" if row.get("lr") is None else f"{row['lr']:.3g}", str(row["seeds"]),
        f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}",
        *("-" if row.get(k) is None else f"{row[k]:.4f}" for k in ("own_share_accuracy_mean", "worst_client_accuracy_mean")),
        human_params(row["upload_params"]), human_params(row["download_params"]), human_bytes(row["upload_bytes"]),
        human_bytes(row["download_bytes"]), human_bytes(row["one_time_bytes"]), f"{row['wall_seconds_mean']:.1f}",
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    right = set(range(1, len(TABLE_HEADERS)))
    lines = ["| " + " | ".join(TABLE_HEADERS) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(TABLE_HEADERS))) + "|"]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["method", "rank", "seeds", "accuracy_mean", "accuracy_std", "accuracies", "initial_accuracy_mean",
              "upload_params", "download_params", "upload_bytes", "download_bytes", "one_time_bytes",
              "trainable_params", "lr", "own_share_accuracy_mean", "worst_client_accuracy_mean", "personalised",
              "wall_seconds_mean"]


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**{k: r[k] for k in CSV_FIELDS}, "accuracies": ";".join(f"{a:.6f}" for a in r["accuracies"]),
                    "accuracy_mean": f"{r['accuracy_mean']:.6f}", "accuracy_std": f"{r['accuracy_std']:.6f}",
                    "initial_accuracy_mean": f"{r['initial_accuracy_mean']:.6f}",
                    "wall_seconds_mean": f"{r['wall_seconds_mean']:.2f}"})
    return buf.getvalue()


def describe(cfg: RunConfig, seeds: list[int], workers: int) -> str:
    f, t = cfg.federation, cfg.train
    budget = f"{t.local_epochs} local epochs" if t.local_epochs else f"{t.local_steps} local steps"
    return (f"{f.clients} clients ({f.partition}), {f.rounds} rounds x {budget}, batch {t.batch_size}, "
            f"seeds {seeds}, {workers} worker(s) x {t.threads} torch thread(s) on {os.cpu_count()} cores")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished (joined) worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_report(out: Path, rows: list[dict[str, Any]], results: list[RunResult], header: str, wall: float,
                 cpu: float | None = None, reused: int = 0) -> None:
    """``compare.md``/``.csv``/``.json``; ``wall`` and ``cpu`` are this invocation's, which after ``--resume``
    ran only ``len(results) - reused`` of the runs."""
    runs = f"{len(results)} runs" if not reused else \
        f"the {len(results) - reused} runs of this invocation ({reused} more were finished by an interrupted one, --resume)"
    md = [
        "# fedsb compare",
        "",
        header + ".",
        "",
        "Accuracy: final test accuracy, mean ± sample std over seeds (a personalised method has no global model: "
        "the mean of its clients' own models on the test set, weighted by their training examples). Own share: each "
        "client's model on its own test share (the test set dealt by each client's training mix of labels, or of sources with federation.split_by = source); worst client: the "
        "lowest of those. Parameters and bytes: per client per round "
        "(float32 on the wire, head included). One-time: per client (Fed-SB's B/A broadcast and init-gradient upload). "
        "Wall: mean seconds per run.",
        "",
        markdown_table(rows),
        f"Total wall time: {wall:.0f} s for {runs}"
        + (f"; CPU time {cpu:.0f} s (user + system, all workers)." if cpu is not None else "."),
        "",
        "![accuracy vs communication](compare.png)",
        "",
    ]
    atomic_write_text(out / "compare.md", "\n".join(md))
    atomic_write_text(out / "compare.csv", csv_text(rows))
    write_json(out / "compare.json", {
        "header": header, "wall_seconds": round(wall, 2), "cpu_seconds": None if cpu is None else round(cpu, 1),
        "runs_reused": reused,
        "rows": rows,
        "runs": [{"method": r.method, "rank": r.rank, "seed": r.seed, "dir": str(r.run_dir.relative_to(out)),
                  "accuracy": accuracy_of(r.summary), "wall_seconds": r.summary["wall_seconds"]} for r in results],
    })


# --- learning-rate tuning ----------------------------------------------------------------------------------------
def base_lr(cfg: RunConfig, method: str, rank: int) -> float:
    """The rate a run of ``method`` at ``rank`` uses without tuning: ``train.lr`` or the method's default."""
    return cfg.train.lr or METHODS[method].default_lr(rank)


TUNE_EXTENSIONS = 2  # extra rates tried past a grid edge that wins (each one grid step further out)


def tune_learning_rates(cfg: RunConfig, spec: CompareSpec, out: Path, workers: int, console: Console,
                        progress: bool, resume: bool = False) -> dict[tuple[str, int], float | None]:
    """Each (method, rank) at ``base_lr x f`` for every ``f`` in ``spec.tune_lr``, scored on a validation slice of
    the training data (first seed; the test split is never read); returns the best rate of each variant (ties:
    the multiplier closest to 1). A variant whose best rate sits on an edge of the grid is tried one grid step
    further out, up to ``TUNE_EXTENSIONS`` times, so that no method is compared at a rate its own tuning was still
    improving on. Writes ``tuning.md`` and ``tuning.json``."""
    variants, seed = spec.variants(), cfg.seed
    grid = spec.tune_lr
    console.print(f"[bold]fedsb compare[/bold]: tuning the learning rate of {len(variants)} variants x "
                  f"{len(grid)} rates on a validation slice of the training data (seed {seed})")
    scores: dict[tuple[str, int], list[tuple[float, float, float]]] = {v: [] for v in variants}
    factor: dict[tuple[str, int, float], float] = {}
    bar = tqdm(desc="tune", unit="run", disable=not progress)

    def on_result(r: RunResult) -> None:
        lr = float(r.summary["lr"])
        scores[(r.method, r.rank)].append((lr, factor[(r.method, r.rank, lr)], accuracy_of(r.summary)))
        bar.update(1)

    def trial_jobs(todo: list[tuple[str, int, float]]) -> list[Job]:
        jobs: list[Job] = []
        for m, r, f in todo:
            lr = base_lr(cfg, m, r) * f
            factor[(m, r, lr)] = f
            jobs.append((len(jobs), m, r, seed, str(out / "tuning" / f"{m}-r{r}-lr{lr:.3g}"), lr, True))
        return sorted(jobs, key=lambda j: -METHODS[j[1]].relative_cost)

    def chosen_of(v: tuple[str, int]) -> tuple[float, float, float]:
        return max(scores[v], key=lambda t: (round(t[2], 6), -abs(math.log(t[1]))))

    todo = [(m, r, f) for m, r in variants for f in grid]
    extended: dict[tuple[str, int], int] = dict.fromkeys(variants, 0)
    step_up = grid[-1] / grid[-2] if len(grid) > 1 else 3.0
    step_down = grid[1] / grid[0] if len(grid) > 1 else 3.0
    try:
        while todo:
            run_or_reuse(cfg, trial_jobs(todo), workers, on_result, resume)
            todo = []
            for v in variants:
                tried = sorted(t[1] for t in scores[v])
                best = chosen_of(v)[1]
                if extended[v] >= TUNE_EXTENSIONS or len(tried) < 2:
                    continue
                if best == tried[-1]:
                    todo.append((*v, best * step_up))
                elif best == tried[0]:
                    todo.append((*v, best / step_down))
                else:
                    continue
                extended[v] += 1
            if todo:
                console.print(f"tuning: {len(todo)} variant(s) best at an edge of the grid, trying one step further out")
    finally:
        bar.close()
    factors = sorted({t[1] for v in variants for t in scores[v]})
    best_lr: dict[tuple[str, int], float | None] = {}
    lines = ["# fedsb compare: learning-rate tuning", "",
             f"Validation accuracy on {cfg.task.validation_fraction:.0%} of the training pool (never the test split), "
             f"seed {seed}; each rate is the method's default times a multiplier in {grid}; a variant whose best rate "
             f"was on an edge of that grid was tried up to {TUNE_EXTENSIONS} grid steps further out ('-': not tried).",
             "", "| method | rank | " + " | ".join(f"x{f:.3g}" for f in factors) + " | chosen lr |",
             "|---|---:|" + "---:|" * len(factors) + "---:|"]
    for v in variants:
        chosen = chosen_of(v)
        best_lr[v] = chosen[0]
        by_f = {t[1]: t for t in scores[v]}
        cells = [("-" if f not in by_f else f"**{by_f[f][2]:.4f}**" if by_f[f] is chosen else f"{by_f[f][2]:.4f}")
                 for f in factors]
        lines.append(f"| {v[0]} | {v[1]} | " + " | ".join(cells) + f" | {chosen[0]:.3g} |")
    atomic_write_text(out / "tuning.md", "\n".join(lines) + "\n")
    write_json(out / "tuning.json", {"multipliers": grid, "extensions": TUNE_EXTENSIONS, "seed": seed,
                                     "trials": {f"{m} r={r}": sorted(scores[(m, r)], key=lambda t: t[1])
                                                for m, r in variants},
                                     "chosen": {f"{m} r={r}": best_lr[(m, r)] for m, r in variants}})
    console.print("\n".join(lines[4:]))
    return best_lr


def reuse_learning_rates(spec: CompareSpec, path: Path) -> tuple[dict[tuple[str, int], float | None], dict[str, Any]]:
    """The rates an earlier ``--tune-lr`` chose (its ``tuning.json``) for every variant of ``spec``, and the file's
    content (copied next to the results as ``tuning-reused.json``, so the table says where its rates came from)."""
    fix = "pass the tuning.json an earlier `fedsb compare --tune-lr` wrote"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        chosen = {str(k): float(v) for k, v in data["chosen"].items()}
    except FileNotFoundError:
        raise UsageError(f"--lr-from: {str(path)!r} not found; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"--lr-from: {str(path)!r} is not a tuning.json with a 'chosen' table; {fix}") from None
    missing = [f"{m} r={r}" for m, r in spec.variants() if f"{m} r={r}" not in chosen]
    if missing:
        raise UsageError(f"--lr-from: {str(path)!r} has no tuned rate for {', '.join(missing)}; tune them with --tune-lr "
                         "or drop them from --methods")
    if any(not (v > 0 and math.isfinite(v)) for v in chosen.values()):
        raise UsageError(f"--lr-from: {str(path)!r} holds a rate that is not a positive number; {fix}")
    return {(m, r): chosen[f"{m} r={r}"] for m, r in spec.variants()}, {**data, "reused_from": str(path)}


# --- the command ---------------------------------------------------------------------------------------------
def default_workers(n_runs: int) -> int:
    """One worker per core (at most 4), never more than there are runs."""
    return max(1, min(os.cpu_count() or 1, 4, n_runs))


def compare(
    cfg: RunConfig,
    spec: CompareSpec,
    overwrite: bool = False,
    progress: bool = True,
    eval_every_set: bool = False,
    console: Console | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run the comparison; returns the table rows (also written under the output directory).

    ``spec.workers`` processes (default: one per core, at most 4) each load the model once and take runs from a
    queue; each runs torch with ``train.threads`` or, by default, ``cores // workers`` threads. Runs are
    independent of each other and of their order, so results do not depend on ``workers``.
    """
    console = console or Console(highlight=False, soft_wrap=True)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if cfg.dp.mode != "off":
        raise UsageError("compare runs without differential privacy; drop the dp.* overrides")
    seeds = [cfg.seed + i for i in range(spec.seeds)]
    variants = spec.variants()
    n_runs = len(variants) * len(seeds)
    workers = min(spec.workers or default_workers(n_runs), n_runs)
    cfg = copy.deepcopy(cfg)
    if not cfg.train.threads:
        cfg.train.threads = max(1, (os.cpu_count() or 1) // workers)
    if not eval_every_set:
        cfg.eval.every = cfg.federation.rounds  # only the final accuracy enters the table
    if cfg.eval.personal == "auto":
        cfg.eval.personal = "on"  # every method gets the own-share and worst-client columns
    lrs: dict[tuple[str, int], float | None] = dict.fromkeys(variants)
    reused = None
    if spec.lr_from:  # checked before anything is written
        lrs, reused = reuse_learning_rates(spec, Path(spec.lr_from))
    # What a resumed comparison must repeat: everything but the parallelism (workers and their threads).
    settings = {"config": cfg.to_dict(), "spec": dataclasses.asdict(spec) | {"workers": None}}
    settings["config"]["train"]["threads"] = None
    if overwrite and resume:
        raise UsageError("--resume continues a comparison and --overwrite replaces it; pass one of the two")
    if resume and out.is_dir():
        try:
            before = json.loads((out / "compare-settings.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UsageError(f"--resume: {str(out)!r} holds no compare-settings.json; it was not started by "
                             "`fedsb compare` (or by an older version): use --overwrite or another --out") from None
        if before != json.loads(json.dumps(settings)):
            raise UsageError(f"--resume: {str(out)!r} was started with other settings; repeat its command exactly, "
                             "or use --overwrite or another --out")
        rundir = RunDir(out)
    else:
        rundir = RunDir.create(out, overwrite=overwrite)
    write_json(rundir.path / "compare-settings.json", settings)
    header = describe(cfg, seeds, workers)
    if spec.tune_lr:
        lrs = tune_learning_rates(cfg, spec, rundir.path, workers, console, progress, resume)
    elif reused is not None:
        write_json(rundir.path / "tuning-reused.json", reused)
        console.print(f"[bold]fedsb compare[/bold]: learning rates from {spec.lr_from} "
                      + ", ".join(f"{m} r={r}: {lr:.3g}" for (m, r), lr in lrs.items() if lr is not None))
    console.print(f"[bold]fedsb compare[/bold]: {len(variants)} method/rank variants x {len(seeds)} seeds = {n_runs} runs; "
                  f"{header}")
    jobs: list[Job] = [(i, m, r, s, str(rundir.path / "runs" / f"{m}-r{r}-s{s}"), lrs[(m, r)], False)
                       for i, (s, (m, r)) in enumerate((s, v) for s in seeds for v in variants)]
    order = {(m, r, s): i for i, m, r, s, *_ in jobs}
    # Longest runs first (the methods with a dense residual, then Fed-SB's init), so that the last runs to
    # finish are short ones and no worker idles long at the end; results are reported in table order.
    jobs.sort(key=lambda j: -METHODS[j[1]].relative_cost)
    results: list[RunResult] = []
    t_start, cpu_start = time.perf_counter(), cpu_seconds()
    bar = tqdm(total=n_runs, desc="compare", unit="run", disable=not progress)

    def on_result(r: RunResult) -> None:
        results.append(r)
        results.sort(key=lambda x: order[(x.method, x.rank, x.seed)])
        bar.update(1)
        bar.write(f"{r.method:<10} r={r.rank:<3} seed {r.seed}: accuracy {accuracy_of(r.summary):.4f} "
                  f"in {r.summary['wall_seconds']:.1f} s")
        write_report(rundir.path, summarise(results, spec), results, header, time.perf_counter() - t_start)

    n_reused = 0
    try:
        n_reused = run_or_reuse(cfg, jobs, workers, on_result, resume)
    finally:
        bar.close()
    wall, cpu = time.perf_counter() - t_start, cpu_seconds() - cpu_start
    rows = summarise(results, spec)
    first = results[0].summary
    title = f"{first.get('task', cfg.task.name)}: accuracy vs communication ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
    header = f"model {first.get('model', cfg.model.name)}, task {first.get('task', cfg.task.name)}, {header}"
    write_report(rundir.path, rows, results, header, wall, cpu, n_reused)
    plot_pareto(rows, rundir.path / "compare.png", title)
    print(markdown_table(rows), end="")
    again = f" for {len(results) - n_reused} runs ({n_reused} reused)" if n_reused else ""
    console.print(f"[bold green]done[/bold green] in {wall:.0f} s{again} (CPU {cpu:.0f} s); results in {rundir.path}/ "
                  "(compare.md, compare.csv, compare.json, compare.png, runs/*/summary.json)")
    return rows
