"""``fedsb flower simulate|deploy|app``: run a fedsb job on Flower (simulation engine or a local deployment).

- ``fedsb flower simulate [CONFIG] [--key value ...]``: ``flwr.simulation.run_simulation`` in this process, one
  virtual SuperNode per client; writes a run directory like ``fedsb run`` plus measured wire bytes.
- ``fedsb flower deploy --supernodes N [CONFIG] [--key value ...]``: a SuperLink and N SuperNodes on free
  127.0.0.1 ports, ``flwr run`` of the fedsb app, every process killed by pid at the end. ``--tls``: the
  multi-machine setup on one machine (throwaway certificates, TLS, only registered SuperNodes may join).
- ``fedsb flower app DIR``: write the Flower App (``pyproject.toml``) for ``flwr run`` on your own SuperLink.

Transport options: ``--wire-dtype float32|bfloat16|float16``, ``--secagg``, ``--cpus-per-client X`` and
``--ray-address HOST:PORT`` (simulation; the latter joins a running Ray cluster), ``--resume`` (continue
``--out DIR`` from its checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from fedsb.errors import UsageError

FLAGS = ("--secagg", "--resume", "--no-progress", "--overwrite", "--client-eval", "--tls")
VALUED = ("--wire-dtype", "--supernodes", "--cpus-per-client", "--deploy-home", "--ray-address")


def split_flower_args(tokens: list[str]) -> tuple[str | None, dict[str, Any], list[tuple[str, str]]]:
    """Config path, transport options, and fedsb ``--key value`` overrides."""
    from fedsb.cli.args import split_args

    config, opts, pairs = split_args(tokens, FLAGS, VALUED)
    return config, dict(opts), pairs


def _options(opts: dict[str, Any]) -> Any:
    from fedsb.comm.accounting import WIRE_DTYPES
    from fedsb.flower.strategy import FlowerOptions

    wire = opts.get("wire-dtype", "float32")
    if wire not in WIRE_DTYPES:
        raise UsageError(f"--wire-dtype {wire!r} is not valid; choose one of: {', '.join(WIRE_DTYPES)}")
    return FlowerOptions(wire_dtype=wire, secagg=bool(opts.get("secagg")), client_eval=bool(opts.get("client-eval")))


def _report(console: Console, summary: dict[str, Any], out: Path) -> None:
    fm, im = summary.get("final_metrics", {}), summary.get("initial_metrics", {})
    fl = summary.get("flower", {})
    acc, acc0 = fm.get("accuracy"), im.get("accuracy")
    if acc is not None and acc0 is not None:
        console.print(f"[bold green]done[/bold green]: test accuracy {acc0:.4f} -> [bold]{acc:.4f}[/bold]")
    console.print(f"wire payload total: up {fl.get('wire_upload_payload_bytes_total', 0):,} B, down "
                  f"{fl.get('wire_download_payload_bytes_total', 0):,} B (messages incl. framing: up "
                  f"{fl.get('wire_upload_message_bytes_total', 0):,} B, down {fl.get('wire_download_message_bytes_total', 0):,} B)")
    if "deployment" in fl:
        d = fl["deployment"]
        tls = ", TLS + SuperNode auth" if d.get("tls_and_supernode_auth") else ""
        console.print(f"deployment: {d['supernodes']} SuperNodes{tls}, up in {d['startup_seconds']} s, wall {d['wall_seconds']} s")
    console.print(f"results in {out}/ (summary.json, metrics.jsonl with wire_* fields per round, wire.json, adapter/)")
    if (out / "node-state").is_dir():  # a personalised method: each node's own model, written on its side
        console.print(f"each node's own model: {out}/node-state/.../partition-<i>/adapter/")


def _resolve(config: str | None, overrides: list[tuple[str, str]], resume: bool = False) -> Any:
    """The run's config; with ``--resume``, the one saved in ``--out DIR``'s checkpoint (as ``fedsb run --resume``)."""
    from fedsb.config import from_dict, overrides_to_dict, resolve, validate
    from fedsb.methods import method_options
    from fedsb.presets import load_presets
    from fedsb.privacy.noise import refuse_reproducible_noise

    if not resume:
        cfg = resolve(config, overrides, load_presets())
        method_options(cfg.method, cfg.method_options, cfg)  # an unknown method or option fails here, before Ray or any model starts
        refuse_reproducible_noise(cfg)  # before Ray or any process starts (the ServerApp refuses it too)
        return cfg
    over = overrides_to_dict(overrides)
    if config is not None or set(over) - {"out"} or not over.get("out"):
        raise UsageError("--resume continues a run with its saved config: pass only --out DIR (the interrupted run)")
    from fedsb.io.checkpoint import load_checkpoint

    cfg = validate(from_dict(load_checkpoint(over["out"]).config))
    cfg.out = str(over["out"])
    return cfg


def _out(cfg: Any, opts: dict[str, Any]) -> Path:
    from fedsb.io.outputs import default_out

    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.exists() and any(out.iterdir()) and not opts.get("overwrite") and not opts.get("resume"):
        raise UsageError(f"{out} already exists and is not empty; pass --overwrite to replace it or --resume to continue it")
    if opts.get("resume") and not (out / "checkpoint.safetensors").is_file():
        raise UsageError(f"--resume: {out} has no checkpoint.safetensors; pass the --out of an interrupted Flower run")
    cfg.out = str(out)
    return out


def _complete(cfg: Any, out: Path, console: Console) -> bool:
    """``--resume`` of a finished run: say so instead of starting Flower."""
    from fedsb.io.checkpoint import load_checkpoint

    if load_checkpoint(out).round >= cfg.federation.rounds and (out / "summary.json").is_file():
        console.print(f"{out} is already complete ({cfg.federation.rounds} of {cfg.federation.rounds} rounds); nothing to resume")
        return True
    return False


def simulate_cmd(tokens: list[str], console: Console | None = None) -> dict[str, Any]:
    from fedsb.flower.simulate import backend_config, simulate

    console = console or Console(highlight=False, soft_wrap=True)
    config, opts, overrides = split_flower_args(tokens)
    if opts.get("tls"):
        raise UsageError("--tls is an option of `fedsb flower deploy` (simulation has no network to secure)")
    cfg = _resolve(config, overrides, bool(opts.get("resume")))
    out = _out(cfg, opts)
    if opts.get("resume") and _complete(cfg, out, console):
        return {}
    cpus = float(opts.get("cpus-per-client", 1))
    console.print(f"[bold]fedsb flower simulate[/bold] {cfg.method} r={cfg.adapter.rank}: {cfg.federation.clients} virtual "
                  f"SuperNodes x {cfg.federation.rounds} rounds, {cpus:g} CPU per ClientApp")
    backend = backend_config(cpus, ray_address=opts.get("ray-address"))
    strategy = simulate(cfg, _options(opts), resume=bool(opts.get("resume")), backend=backend)
    summary = strategy.result_summary()
    _report(console, summary, out)
    return summary


def deploy_cmd(tokens: list[str], console: Console | None = None) -> dict[str, Any]:
    from fedsb.flower.deploy import deploy_run

    console = console or Console(highlight=False, soft_wrap=True)
    config, opts, overrides = split_flower_args(tokens)
    if "supernodes" in opts and not opts.get("resume"):
        overrides = [*overrides, ("federation.clients", str(opts["supernodes"]))]
    cfg = _resolve(config, overrides, bool(opts.get("resume")))
    n = cfg.federation.clients
    out = _out(cfg, opts)
    if opts.get("resume") and _complete(cfg, out, console):
        return {}
    secure = bool(opts.get("tls"))
    mode = "TLS + SuperNode authentication, throwaway certificates" if secure else "insecure, loopback only"
    console.print(f"[bold]fedsb flower deploy[/bold] {cfg.method} r={cfg.adapter.rank}: SuperLink + {n} SuperNodes on 127.0.0.1, "
                  f"{cfg.federation.rounds} rounds ({mode})")
    summary = deploy_run(cfg, _options(opts), n, home=opts.get("deploy-home"), resume=bool(opts.get("resume")), secure=secure)
    _report(console, summary, out)
    return summary


def app_cmd(tokens: list[str], console: Console | None = None) -> Path:
    from fedsb.flower.deploy import write_app

    console = console or Console(highlight=False, soft_wrap=True)
    if len(tokens) != 1 or tokens[0].startswith("--"):
        raise UsageError("usage: fedsb flower app DIR (writes DIR/pyproject.toml for `flwr run DIR <superlink>`)")
    path = write_app(tokens[0])
    console.print(f"wrote {path / 'pyproject.toml'}; run it with: flwr run {path} <superlink> --stream "
                  "--run-config 'flower.config-file=\"/abs/fedsb.toml\" out=\"runs/x\"'")
    return path


def flower(tokens: list[str]) -> int:
    """Dispatch ``fedsb flower SUBCOMMAND ...``."""
    if not tokens or tokens[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if tokens else 2
    sub, rest = tokens[0], tokens[1:]
    if sub == "simulate":
        simulate_cmd(rest)
    elif sub == "deploy":
        deploy_cmd(rest)
    elif sub == "app":
        app_cmd(rest)
    else:
        raise UsageError(f"unknown flower subcommand {sub!r}; choose simulate, deploy or app")
    return 0
