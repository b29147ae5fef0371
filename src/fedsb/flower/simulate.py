"""Run a fedsb job on Flower's simulation engine (Ray) from Python: ``run_simulation`` in this process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedsb.config import RunConfig
from fedsb.environment import apply_offline_env
from fedsb.errors import FedsbError
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions


def backend_config(cpus_per_client: float = 1.0, gpus_per_client: float = 0.0, total_cpus: int | None = None,
                   total_gpus: int = 0, ray_address: str | None = None) -> dict[str, Any]:
    """Ray resources: each ClientApp reserves ``cpus_per_client`` (Flower's default of 2 serialises 2-core boxes).

    ``ray_address`` (``HOST:PORT`` of a running ``ray start --head``, or ``"auto"``) joins that Ray cluster
    instead of starting a local one; the cluster's own resources then apply (Ray refuses ``num_cpus`` when
    connecting), and every node needs fedsb installed in the same environment.
    """
    resources = {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client}
    if ray_address:
        return {"client_resources": resources, "init_args": {"address": ray_address}}
    total = total_cpus or max(1, os.cpu_count() or 1)
    return {"client_resources": resources, "init_args": {"num_cpus": total, "num_gpus": total_gpus, "include_dashboard": False}}


def simulate(cfg: RunConfig, options: FlowerOptions | None = None, resume: bool = False,
             backend: dict[str, Any] | None = None, verbose: bool = False) -> FedsbStrategy:
    """One federated run with ``cfg.federation.clients`` virtual SuperNodes; returns the server strategy."""
    apply_offline_env()
    from flwr.simulation import run_simulation

    from fedsb.flower.clientapp import app as client_app
    from fedsb.flower.node_store import STATE_DIR_ENV
    from fedsb.flower.serverapp import make_server_app
    from fedsb.io.outputs import default_out

    cfg.out = cfg.out or str(default_out(cfg))
    # One person runs every party: the virtual nodes keep their personal tensors (FedSA-LoRA) under the run
    # directory, unless the caller chose a place (the variable is read by the ClientApps, Ray workers included).
    before = os.environ.get(STATE_DIR_ENV)
    os.environ[STATE_DIR_ENV] = before or str(Path(cfg.out) / "node-state")
    results: dict[str, Any] = {}
    try:
        run_simulation(server_app=make_server_app(cfg, options, resume, results), client_app=client_app,
                       num_supernodes=cfg.federation.clients, backend_config=backend or backend_config(),
                       verbose_logging=verbose)
    finally:
        if before is None:
            os.environ.pop(STATE_DIR_ENV, None)
    if "strategy" not in results:
        raise FedsbError("the Flower simulation ended without a result; rerun with --debug and read the ServerApp log above")
    return results["strategy"]
