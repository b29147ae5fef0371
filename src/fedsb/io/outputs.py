"""The final files of a run, written the same way by ``fedsb run`` and the Flower ServerApp."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import Tensor

from fedsb.config import RunConfig
from fedsb.core.federation import Federation
from fedsb.io.export import export_peft
from fedsb.io.plots import plot_curves
from fedsb.io.rundir import RunDir
from fedsb.io.state_io import save_tensors


def default_out(cfg: RunConfig) -> Path:
    """``runs/<method>-r<rank>-<timestamp>``: where a run writes when ``out`` is unset."""
    return Path("runs") / f"{cfg.method}-r{cfg.adapter.rank}-{time.strftime('%Y%m%d-%H%M%S')}"


def save_model(fed: Federation, state_path: Path, peft_dir: Path, with_residual: bool = False) -> None:
    """The adapted model as it stands: its adapter state (safetensors; ``with_residual``: plus FedEx-LoRA's or
    FLoRA's base residual) and a standard PEFT adapter."""
    meta = {"method": fed.cfg.method, "rank": str(fed.cfg.adapter.rank)}
    save_tensors(state_path, {**fed.adapted.get_state(), **(fed.adapted.residual_state() if with_residual else {})}, metadata=meta)
    export_peft(fed.adapted, peft_dir, fed.loaded.source, "SEQ_CLS" if fed.loaded.kind == "classification" else "CAUSAL_LM")


def save_final(run: RunDir, fed: Federation, rows: list[dict[str, Any]], summary: dict[str, Any],
               clients: dict[int, dict[str, Tensor]] | None = None) -> None:
    """Adapter state (safetensors), the PEFT adapter, the curves plot, ``metrics.jsonl`` and ``summary.json``.

    ``clients``: for a personalised method (FedSA-LoRA), the tensors each client kept for itself; each client's
    own model is then also written, as ``adapter_state.client-<i>.safetensors`` and the PEFT adapter ``adapter-client-<i>/``
    (the plain ``adapter`` holds the shared part with the server's initial local tensors)."""
    save_model(fed, run.path / "adapter_state.safetensors", run.path / "adapter", with_residual=True)
    if clients:
        shared = fed.adapted.get_state()
        for c, own in sorted(clients.items()):
            fed.adapted.set_state(own)
            save_model(fed, run.path / f"adapter_state.client-{c}.safetensors", run.path / f"adapter-client-{c}")
        fed.adapted.set_state(shared)
    plot_curves(rows, run.path / "curves.png", f"{fed.cfg.method} r={fed.cfg.adapter.rank} on {fed.task.name}")
    run.write_metrics(rows)
    run.write_summary(summary)
