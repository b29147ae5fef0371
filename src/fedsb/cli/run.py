"""``fedsb run [CONFIG.toml] [--key value ...]``: a federated job in the in-process simulator."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsb.config import RunConfig, from_dict, overrides_to_dict, validate
from fedsb.core.client import train_client
from fedsb.core.federation import build_federation
from fedsb.errors import FedsbError, Interrupted, UsageError
from fedsb.io.checkpoint import load_checkpoint, remove_stale_temp, restore_checkpoint, save_checkpoint
from fedsb.io.outputs import default_out, save_final
from fedsb.io.rundir import RunDir
from fedsb.io.tracking import check_backends, make_trackers
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.noise import NOT_PRIVATE, SECRET
from fedsb.simulation.simulator import SimulationResult, Simulator

COLUMNS = [("round", 5, "{:d}"), ("accuracy", 8, "{:.4f}"), ("loss", 8, "{:.4f}"), ("train_loss", 10, "{:.4f}"),
           ("clients_accepted", 7, "{:d}"), ("upload_params_per_client", 10, "{:,d}"),
           ("download_params_per_client", 10, "{:,d}"), ("seconds", 7, "{:.1f}")]
HEADERS = ["round", "test acc", "test loss", "train loss", "clients", "up/client", "down/client", "secs"]
EPS_COLUMN, EPS_HEADER = ("epsilon", 7, "{:.3f}"), "eps(max)"  # shown when DP is on


def held_out(cfg: RunConfig) -> str:
    """What the server scores: ``test``, or ``validation`` (a slice of the training pool) with task.evaluate_on."""
    return "validation" if cfg.task.evaluate_on == "validation" else "test"


def dp_columns(cfg: RunConfig) -> tuple[list[tuple[str, int, str]], list[str]]:
    """The table's columns: the defaults, plus the epsilon spent so far when DP is on; "val" headers when the
    server scores the validation slice."""
    headers = HEADERS if held_out(cfg) == "test" else [h.replace("test ", "val ") for h in HEADERS]
    if cfg.dp.mode == "off":
        return COLUMNS, headers
    return COLUMNS[:-1] + [EPS_COLUMN, COLUMNS[-1]], headers[:-1] + [EPS_HEADER, headers[-1]]


def make_simulator(cfg: RunConfig, fed: Any, progress: bool) -> Simulator:
    """The simulator, with the DP client trainer when ``dp.mode`` is not off (README "Differential privacy")."""
    return Simulator(cfg, fed=fed, trainer=make_dp_trainer(fed) or train_client, progress=progress)


def fmt_row(row: dict[str, Any], columns: list[tuple[str, int, str]] | None = None, headers: list[str] | None = None) -> str:
    cells = []
    for (key, width, f), _ in zip(columns or COLUMNS, headers or HEADERS, strict=True):
        v = row.get(key)
        cells.append(("-" if v is None else f.format(v)).rjust(max(width, len(_))))
    return "  ".join(cells)


def run(cfg: RunConfig, overwrite: bool = False, console: Console | None = None, progress: bool = True) -> SimulationResult:
    console = console or Console(highlight=False, soft_wrap=True)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a directory; pass a directory path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        RunDir.create(out, overwrite=False)  # raises the usage error before any heavy work
    check_paths(cfg)
    console.print(f"[bold]fedsb[/bold] {cfg.method} r={cfg.adapter.rank}: model {cfg.model.name}, task {cfg.task.label}, "
                  f"{cfg.federation.clients} clients x {cfg.federation.rounds} rounds")
    fed = build_federation(cfg)
    cfg.out = str(out)
    # The old directory is only replaced once the model and data have loaded (bad input never destroys it),
    # and it is kept aside until the new run has written its first checkpoint: a failure before that
    # (e.g. during the adapter initialisation) removes the new directory and puts the old one back.
    existed = out.exists()
    backup = _move_aside(out) if overwrite and existed and any(out.iterdir()) else None
    try:
        rundir = RunDir.create(out, overwrite=False)
        rundir.write_config(cfg.to_dict())
        sim = make_simulator(cfg, fed, progress)
    except BaseException:
        _roll_back(out, backup, existed)
        raise
    return _execute(sim, rundir, console, start_round=1, backup=backup, existed=existed)


def check_paths(cfg: RunConfig) -> None:
    """Local files the run will read, checked before any heavy work (the loaders check their contents); also
    that every configured experiment tracker is installed."""
    check_backends(cfg.tracking.backends)
    if cfg.task.path is not None and not Path(cfg.task.path).expanduser().exists():
        raise FedsbError(f"data file {cfg.task.path!r} not found; check task.path (--data)")
    if cfg.init.source == "public" and cfg.init.public_path is not None and not Path(cfg.init.public_path).expanduser().exists():
        raise FedsbError(f"init.public_path {cfg.init.public_path!r} not found; pass an existing data file, "
                         "or leave it unset to use the task's held-out split")


def _move_aside(out: Path) -> Path:
    backup = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if backup.exists():
        shutil.rmtree(backup)
    out.rename(backup)
    return backup


def _roll_back(out: Path, backup: Path | None, existed: bool) -> None:
    """Undo a new run that failed before its first checkpoint: no partial output, the old run restored."""
    if out.exists():
        if existed and backup is None:  # an empty directory the user made: keep it, empty
            for entry in out.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        else:
            shutil.rmtree(out, ignore_errors=True)
    if backup is not None and backup.exists():
        backup.rename(out)


def resume(run_dir: str | Path, overrides: list[tuple[str, str]] | None = None, console: Console | None = None,
           progress: bool = True) -> SimulationResult | None:
    """Continue ``run_dir`` from its last checkpointed round (``fedsb run --resume RUN_DIR``).

    The config comes from the checkpoint; only ``train.threads`` may be overridden (results on CPU are
    bit-identical to an uninterrupted run only with the same thread count).
    """
    console = console or Console(highlight=False, soft_wrap=True)
    rd = Path(run_dir)
    if not rd.is_dir():
        raise UsageError(f"cannot resume {str(rd)!r}: no such run directory; pass a directory written by `fedsb run`")
    if not (rd / "config.toml").is_file():
        raise UsageError(f"cannot resume {str(rd)!r}: it has no config.toml, so it is not a fedsb run directory")
    ckpt = load_checkpoint(rd)
    cfg = validate(from_dict(ckpt.config))
    for key, value in overrides_to_dict(overrides or []).items():
        allowed = key == "train" and isinstance(value, dict) and set(value) <= {"threads"}
        if not allowed:
            raise UsageError(f"--resume continues the run with its own config; only --train.threads may be changed (got --{key})")
        cfg.train.threads = validate(from_dict({"train": value})).train.threads
    cfg.out = str(rd)
    rounds = cfg.federation.rounds
    if ckpt.round >= rounds and (rd / "summary.json").is_file() and (rd / "adapter_state.safetensors").is_file():
        console.print(f"{rd} is already complete ({rounds} of {rounds} rounds); nothing to resume")
        return None
    console.print(f"[bold]fedsb[/bold] resuming {rd} after round {ckpt.round} of {rounds}: {cfg.method} r={cfg.adapter.rank}, "
                  f"model {cfg.model.name}, task {cfg.task.label}")
    fed = build_federation(cfg)
    sim = make_simulator(cfg, fed, progress)
    start = restore_checkpoint(sim, ckpt)
    rundir = RunDir(rd)
    remove_stale_temp(rd)  # temp files of an atomic write the crash interrupted
    rundir.write_metrics(sim.rows)  # drop any row written after the checkpoint
    return _execute(sim, rundir, console, start_round=start)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (job schedulers, ``kill``) like Ctrl-C, so the run stops at a clean, resumable point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(sim: Simulator, rundir: RunDir, console: Console, start_round: int, backup: Path | None = None,
             existed: bool = True) -> SimulationResult:
    """Rounds ``start_round..`` with a checkpoint after each; a Ctrl-C abandons the current round cleanly.

    A new run (``start_round == 1`` and nothing checkpointed) that fails before its first checkpoint is rolled
    back (see :func:`run`); once round 0 is checkpointed, the replaced run's ``backup`` is deleted.
    """
    fed, cfg = sim.fed, sim.cfg
    sizes = [len(s) for s in fed.shards]
    console.print(f"clients hold {sizes} training examples ({cfg.federation.partition}); {len(fed.task.test)} {held_out(cfg)} examples; "
                  f"{fed.adapted.num_trainable():,} trainable parameters in {len(fed.adapted.layers)} adapted layers")
    columns, headers = dp_columns(cfg)
    header = "  ".join(h.rjust(max(w, len(h))) for (_, w, _), h in zip(columns, headers, strict=True))
    ps = sim.trainer.privacy_summary()
    if ps is not None:
        sigmas = sorted({round(p["noise_multiplier"], 4) for p in ps["parties"].values()})
        console.print(f"[bold]{ps['label']}[/bold]: target epsilon {ps['target_epsilon']}, delta {ps['delta']:.3g}, "
                      f"clip {ps['max_grad_norm']:g}, noise multiplier {', '.join(map(str, sigmas))} ({ps['accountant']})")
        if ps["noise"] != SECRET:
            console.print(f"[bold red]dp.reproducible_noise: {NOT_PRIVATE}; the epsilons below hold for no one[/bold red]")
    if start_round > 1 or sim.rows:
        console.print(header)

    saved: list[int] = [sim.rows[-1]["round"]] if sim.rows else []
    trackers = make_trackers(cfg.tracking.backends, rundir.path, rundir.path.name, cfg.to_dict())

    def on_round(row: dict[str, Any]) -> None:
        rundir.write_metrics(sim.rows)
        trackers(row)
        if row["round"] == 0:
            console.print(header)
        console.print(fmt_row(row, columns, headers))
        for rej in row.get("rejected", []):
            console.print(f"  [yellow]rejected client {rej['client']}: {rej['reason']}[/yellow]")
        if row.get("skipped"):
            console.print(f"  [yellow]round {row['round']} skipped: fewer than federation.min_clients = "
                          f"{cfg.federation.min_clients} valid updates; global state unchanged[/yellow]")
        save_checkpoint(rundir.path, sim)
        saved.append(row["round"])
        if backup is not None and backup.exists():
            shutil.rmtree(backup, ignore_errors=True)  # the new run is resumable now: drop the replaced one

    sim.on_round = on_round
    try:
        with sigterm_as_interrupt():
            result = sim.run(start_round=start_round)
            own = ({c: sim.local_state.get(c, sim.local_start) for c in range(len(result.fed.shards))}
                   if result.fed.method.personalised else None)
            save_final(rundir, result.fed, result.rows, result.summary, clients=own)
    except BaseException as exc:
        fresh = not saved and start_round == 1
        if fresh:
            _roll_back(rundir.path, backup, existed)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        if fresh:
            raise Interrupted("interrupted before the first checkpoint (round 0); nothing was written, run the same command again") from None
        where = "while writing the final outputs" if saved[-1] >= cfg.federation.rounds else f"in round {saved[-1] + 1}"
        raise Interrupted(
            f"interrupted {where}; {rundir.path} holds a checkpoint after round {saved[-1]}: "
            f"continue with `fedsb run --resume {rundir.path}`"
        ) from None
    finally:
        trackers.close()
    s = result.summary
    c = s["comm"]
    if sim.stop_reason:
        console.print(f"[yellow]{sim.stop_reason}; stopped after round {result.rows[-1]['round']} of "
                      f"{cfg.federation.rounds}, everything so far is saved[/yellow]")
    if "privacy" in s:
        eps = {k: v["epsilon"] for k, v in s["privacy"]["parties"].items()}
        console.print(f"epsilon spent ({s['privacy']['mode']}-level, delta {s['privacy']['delta']:.3g}): max "
                      f"{s['privacy']['epsilon']:.4g}; per {'client' if s['privacy']['mode'] == 'sample' else 'party'} "
                      + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in eps.items())
                      + ("" if s["privacy"]["noise"] == SECRET else f" [bold red]({NOT_PRIVATE})[/bold red]"))
    acc = s["final_metrics"].get("accuracy")
    acc0 = s["initial_metrics"].get("accuracy")
    done = f"[bold green]done[/bold green] in {s['wall_seconds']:.1f} s"
    if acc is not None:  # no initial accuracy with eval.initial = false
        done += f": {held_out(cfg)} accuracy " + (f"{acc0:.4f} -> " if acc0 is not None else "") + f"[bold]{acc:.4f}[/bold]"
    console.print(done)
    console.print(
        f"sent per client per round: up {c['upload_params_per_client_round']:,} params ({c['upload_bytes_per_client_round']:,} B), "
        f"down {c['download_params_per_client_round']:,} params; total up {c['upload_bytes_total']:,} B, down "
        f"{c['download_bytes_total']:,} B; one-time {c['one_time_bytes']:,} B"
    )
    console.print(f"results in {rundir.path}/ (summary.json, metrics.jsonl, curves.png, adapter/ [PEFT LoRA])")
    return result
