"""The fedsb ServerApp, and the mapping from Flower's run config to fedsb's config.

``[tool.flwr.app.config]`` (and ``flwr run --run-config``) takes fedsb's own dotted keys unchanged
(``method``, ``adapter.rank``, ``federation.rounds``, ``train.local_steps`` ...) plus a few ``flower.*``
keys for the transport (:class:`~fedsb.flower.strategy.FlowerOptions`):

====================================  =======================================================================
``flower.config-file``                a fedsb TOML config read first (the other keys override it)
``flower.wire-dtype``                 ``float32`` | ``bfloat16`` | ``float16``: dtype of R/B (etc.) on the wire;
                                      fixed for a run (a resume with another is refused)
``flower.secagg``                     ``true``: SecAgg+ (Fed-SB, FFA-LoRA, FedIT only)
``flower.secagg-clipping-range``      SecAgg+ clipping range (default 8.0)
``flower.secagg-quantization-range``  SecAgg+ quantization levels (default 2**24)
``flower.client-eval``                ``true``: also evaluate on every node after each round
``flower.timeout``                    seconds to wait for the replies of one round (default 600)
``flower.connect-timeout``            seconds to wait for the SuperNodes to connect (default 120)
``flower.resume``                     ``true``: continue the run directory ``out`` from its checkpoint
``flower.overwrite``                  ``true``: replace a non-empty run directory ``out``
====================================  =======================================================================

``out`` names the run directory, written as by ``fedsb run`` (config.toml, metrics.jsonl, summary.json,
checkpoint.safetensors after every round, adapter_state.safetensors and a PEFT adapter at the end).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsb.config import RunConfig, from_dict, load_toml, merge, validate
from fedsb.errors import FedsbError, UsageError
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.methods import method_options

FLOWER_KEYS = {
    "flower.wire-dtype": ("wire_dtype", str),
    "flower.secagg": ("secagg", bool),
    "flower.secagg-clipping-range": ("secagg_clipping_range", float),
    "flower.secagg-quantization-range": ("secagg_quantization_range", int),
    "flower.client-eval": ("client_eval", bool),
    "flower.timeout": ("timeout", float),
    "flower.connect-timeout": ("connect_timeout", float),
}
EXTRA_KEYS = ("flower.config-file", "flower.resume", "flower.overwrite")


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"federation.rounds": 2}`` -> ``{"federation": {"rounds": 2}}`` (dashes read as underscores)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.replace("-", "_").split(".")
        if len(parts) > 2:
            raise UsageError(f"run config key {key!r} has more than one dot; fedsb keys look like section.key")
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out


def parse_run_config(run_config: dict[str, Any]) -> tuple[RunConfig, FlowerOptions, dict[str, Any]]:
    """Flower run config -> (fedsb config, transport options, extras such as ``flower.resume``)."""
    fedsb_keys = {k: v for k, v in run_config.items() if not k.startswith("flower.")}
    unknown = [k for k in run_config if k.startswith("flower.") and k not in FLOWER_KEYS and k not in EXTRA_KEYS]
    if unknown:
        raise UsageError(f"unknown run config key {unknown[0]!r}; flower keys are: {', '.join([*FLOWER_KEYS, *EXTRA_KEYS])}")
    base: dict[str, Any] = {}
    if run_config.get("flower.config-file"):
        base = load_toml(str(run_config["flower.config-file"]))
    data = merge(base, nest(fedsb_keys))
    if data.get("out") == "":
        data.pop("out")
    cfg = validate(from_dict(data))
    method_options(cfg.method, cfg.method_options, cfg)  # an unknown method or option fails here, before any model loads
    opts = FlowerOptions()
    for key, (attr, tp) in FLOWER_KEYS.items():
        if key in run_config:
            setattr(opts, attr, tp(run_config[key]))
    extras = {k: run_config[k] for k in EXTRA_KEYS if k in run_config}
    return cfg, opts, extras


def serve(grid: Grid, context: Context, cfg: RunConfig, opts: FlowerOptions, resume: bool = False,
          results: dict[str, Any] | None = None, overwrite: bool = True) -> FedsbStrategy:
    """The ServerApp body: build the strategy, (re)start from the run directory, run all rounds, save outputs."""
    from fedsb.io.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
    from fedsb.io.outputs import default_out
    from fedsb.io.rundir import RunDir
    from fedsb.io.tracking import check_backends, make_trackers

    check_backends(cfg.tracking.backends)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    start = 1
    if resume:
        ckpt = load_checkpoint(out)
        saved = validate(from_dict(ckpt.config))
        if {**saved.to_dict(), "out": None} != {**cfg.to_dict(), "out": None}:
            raise FedsbError(f"flower.resume: the run config differs from the one saved in {out}; resume with the same config")
        saved_wire = ckpt.meta["comm"].get("wire_dtype", "float32")
        if saved_wire != opts.wire_dtype:  # the ledger and the nodes' decoding assume one wire dtype for the whole run
            raise FedsbError(f"flower.resume: {out} was run with flower.wire-dtype = {saved_wire} but this resume asks for "
                             f"{opts.wire_dtype}; resume with flower.wire-dtype = {saved_wire}")
        strategy = FedsbStrategy(cfg, opts)
        start = restore_checkpoint(strategy, ckpt)
        rundir = RunDir(out)
        if start > cfg.federation.rounds:
            print(f"{out} is already complete; nothing to resume")
            if results is not None:
                results["strategy"] = strategy
            return strategy
    else:
        if not overwrite and out.exists() and any(out.iterdir()):
            raise UsageError(f"run directory {out} is not empty; set flower.overwrite = true to replace it or flower.resume = true")
        strategy = FedsbStrategy(cfg, opts)
        rundir = RunDir.create(out, overwrite=True)
        rundir.write_config(cfg.to_dict())

    trackers = make_trackers(cfg.tracking.backends, rundir.path, rundir.path.name, cfg.to_dict())

    def on_round(row: dict[str, Any]) -> None:
        rundir.write_metrics(strategy.rows)
        trackers(row)
        save_checkpoint(rundir.path, strategy)
        acc = row.get("accuracy")
        eps = f", epsilon {row['epsilon']:.4g} (max over {row['dp_mode']}-level accountants)" if "epsilon" in row else ""
        print(f"[fedsb] round {row['round']}: accuracy {acc if acc is None else round(acc, 4)}, "
              f"wire up {row.get('wire_upload_payload_bytes', 0):,} B / down {row.get('wire_download_payload_bytes', 0):,} B payload{eps}",
              flush=True)

    strategy.on_round = on_round
    try:
        strategy.run(grid, start_round=start, context=context)
    finally:
        trackers.close()
    if strategy.stop_reason:
        print(f"[fedsb] {strategy.stop_reason}; stopped after round {strategy.rows[-1]['round']} of "
              f"{cfg.federation.rounds}, everything so far is saved", flush=True)
    save_outputs(rundir, strategy)
    if results is not None:
        results["strategy"] = strategy
    return strategy


def save_outputs(rundir: Any, strategy: FedsbStrategy) -> None:
    """The final files ``fedsb run`` writes, plus ``wire.json`` (the bytes measured on Flower's messages)."""
    from fedsb.io.outputs import save_final
    from fedsb.io.rundir import write_json

    save_final(rundir, strategy.fed, strategy.rows, strategy.result_summary())
    write_json(rundir.path / "wire.json", {"rows": [{k: v for k, v in r.items() if k.startswith("wire_") or k == "round"}
                                                    for r in strategy.rows]})


def make_server_app(cfg: RunConfig, opts: FlowerOptions | None = None, resume: bool = False,
                    results: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to a config (``run_simulation`` has no run config); ``results['strategy']`` gets the strategy."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context, cfg, opts or FlowerOptions(), resume, results)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: config from ``[tool.flwr.app.config]`` and ``--run-config``."""
    t0 = time.time()
    cfg, opts, extras = parse_run_config(dict(context.run_config))
    serve(grid, context, cfg, opts, bool(extras.get("flower.resume", False)),
          overwrite=bool(extras.get("flower.overwrite", False)))
    print(f"[fedsb] ServerApp finished in {time.time() - t0:.1f} s", flush=True)
