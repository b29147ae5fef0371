"""The run summary (``summary.json``) and the analytical costs it reports, the same for both engines."""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from fedsb.comm.accounting import CommLedger, LayerDims, dtype_bytes
from fedsb.config import RunConfig
from fedsb.core.client import ClientTrainer
from fedsb.core.federation import Federation, layer_shapes
from fedsb.init.sources import default_lowrank_rank, expected_upload


class RunRecord(Protocol):
    """What a finished (or stopped) run exposes to the summary: the simulator and the Flower strategy both do."""

    cfg: RunConfig
    fed: Federation
    rows: list[dict[str, Any]]
    comm: CommLedger
    one_time: dict[str, int]
    trainer: ClientTrainer
    stop_reason: str | None
    init_seconds: float


def layer_dims(fed: Federation) -> list[LayerDims]:
    return [LayerDims(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]


def analytic_round_params(fed: Federation, k: int) -> tuple[int, int]:
    """(upload, download) parameters per client per round from the method's formula (head included)."""
    head = sum(p.numel() for p in fed.adapted.head_parameters()) if fed.method.head_travels else 0
    up, down = fed.method.round_params(fed.cfg.adapter.rank, [(d.d_out, d.d_in) for d in layer_dims(fed)], k, len(fed.shards))
    return up + head, down + head


def analytic_one_time(fed: Federation) -> dict[str, int]:
    """One-time costs per client from the formulas: B/A broadcast and the configured init source's upload."""
    cfg = fed.cfg
    down = fed.method.one_time_download(cfg.adapter.rank, [(d.d_out, d.d_in) for d in layer_dims(fed)])
    if not fed.method.gradient_init:
        return {"download_params": down, "upload_params": 0, "upload_bytes": 0}
    rank = cfg.init.lowrank_rank or default_lowrank_rank(cfg.adapter.rank, cfg.init.lowrank_bits)
    up = expected_upload(cfg.init.source, layer_shapes(fed), rank, cfg.init.lowrank_bits)
    return {"download_params": down, "upload_params": up["params"], "upload_bytes": up["bytes"]}


def run_summary(run: RunRecord, wall_seconds: float) -> dict[str, Any]:
    """``summary.json`` of a run: what was trained, the first and last metrics, every byte sent, DP, timing."""
    fed, cfg, comm = run.fed, run.cfg, run.comm
    k_round = max(1, round(cfg.federation.fraction * cfg.federation.clients))
    up, down = analytic_round_params(fed, k_round)
    final = {k: v for k, v in run.rows[-1].items() if k in ("accuracy", "loss") or k.startswith(("acc", "eps", "personal_"))}
    first = run.rows[0] if run.rows and run.rows[0]["round"] == 0 else {}
    wire = comm.wire_dtype
    privacy = run.trainer.privacy_summary()
    return {
        "method": cfg.method,
        "rank": cfg.adapter.rank,
        "num_clients": cfg.federation.clients,
        "clients_per_round": k_round,
        "rounds": cfg.federation.rounds,
        "model": fed.loaded.source,
        "task": fed.task.name,
        "trainable_params": fed.adapted.num_trainable(),
        "initial_metrics": {k: v for k, v in first.items() if k in ("accuracy", "loss")},
        "final_metrics": final,
        "comm": {
            "wire_dtype": wire,
            "upload_params_per_client_round": up,
            "download_params_per_client_round": down,
            "upload_bytes_per_client_round": up * dtype_bytes(wire),
            "download_bytes_per_client_round": down * dtype_bytes(wire),
            "upload_params_total": comm.upload_params,
            "download_params_total": comm.download_params,
            "upload_bytes_total": comm.upload_bytes,
            "download_bytes_total": comm.download_bytes,
            "catchup_download_bytes_total": comm.catchup_download_bytes,
            "one_time_bytes": comm.one_time_upload_bytes + comm.one_time_download_bytes,
            "resync_download_params_total": comm.resync_download_params,
            "resync_download_bytes_total": comm.resync_download_bytes,
            "evaluate_download_bytes_total": comm.evaluate_download_bytes,
            "all_bytes_total": comm.total_bytes,
            "one_time": {
                **run.one_time,
                "upload_bytes_total": comm.one_time_upload_bytes,
                "download_bytes_total": comm.one_time_download_bytes,
            },
            "analytic_one_time_per_client": analytic_one_time(fed),
        },
        **({"stopped_early": run.stop_reason} if run.stop_reason else {}),
        **({"privacy": privacy} if privacy is not None else {}),
        "init_seconds": round(run.init_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
