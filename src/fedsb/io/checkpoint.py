"""Per-round checkpoints of a simulated run, so that ``fedsb run --resume RUN_DIR`` continues bit-identically.

One file, ``checkpoint.safetensors`` in the run directory, rewritten atomically after every completed round
(temp file + fsync + rename, so a crash leaves either the previous or the new checkpoint, never a torn one).
It holds, as tensors:

- ``server.adapter.<name>`` / ``server.pending.<name>``: the server's :class:`~fedsb.methods.base.ServerState`;
- ``model.<name>``: every adapter/head tensor of the shared model (Fed-SB's B, A, R; LoRA A, B; the head)
  and the dense base-weight residuals FedEx-LoRA and FLoRA folded in (``<layer>.residual``);
- ``rng.torch`` (and ``rng.cuda.<i>``): the global torch RNG states (dropout draws from them);

and, as JSON in the safetensors metadata (key ``fedsb.io.checkpoint``): the round, the resolved config, all
metrics rows so far, the communication ledger, the python/numpy RNG states, and ``trainer_state``.

``trainer_state`` is the hook for per-client state kept across rounds by a trainer (e.g. a DP accountant per
client): :meth:`fedsb.core.client.ClientTrainer.state_dict` (JSON-serialisable, None when there is nothing to
keep) is saved, and given back to ``load_state_dict`` on resume. Per-client optimizers are not kept:
every client starts each round with a fresh optimizer (see ``fedsb.core.client.train_client``).

Wall-clock fields are not reproducible and are excluded from the bit-identity promise: ``seconds`` in
metrics rows, ``init_seconds`` and ``wall_seconds`` in ``summary.json`` (see :data:`TIMING_FIELDS`).
The file holds only tensors and JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from fedsb.comm.accounting import CommLedger
from fedsb.config import RunConfig
from fedsb.core.client import ClientTrainer
from fedsb.core.federation import Federation
from fedsb.errors import FedsbError
from fedsb.io.rundir import atomic_write_bytes
from fedsb.methods.base import ServerState

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT_VERSION = 1
META_KEY = "fedsb.checkpoint"
#: Wall-clock fields: they differ between an interrupted-and-resumed run and an uninterrupted one.
TIMING_FIELDS = ("seconds", "init_seconds", "wall_seconds")


class Resumable(Protocol):
    """What a checkpoint saves and restores: the simulator and the Flower strategy both expose it."""

    cfg: RunConfig
    fed: Federation
    state: ServerState | None
    rows: list[dict[str, Any]]
    comm: CommLedger
    one_time: dict[str, int]
    init_seconds: float
    trainer: ClientTrainer
    local_state: dict[int, dict[str, Tensor]]  # per client, what it keeps for itself (empty where clients hold it)
    local_start: dict[str, Tensor]


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint (tensors grouped by prefix, plus the JSON metadata)."""

    round: int
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    server_adapter: dict[str, Tensor]
    server_pending: dict[str, Tensor]
    model_state: dict[str, Tensor]
    client_state: dict[int, dict[str, Tensor]]
    rng_torch: Tensor
    rng_cuda: list[Tensor]
    meta: dict[str, Any]


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=True)  # (numpy's stubs wrongly give False as the default)
    assert isinstance(state, tuple)  # the global RandomState is an MT19937, whose legacy state is this tuple
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def save_checkpoint(run_dir: str | Path, sim: Resumable) -> Path:
    """Atomically write the state of ``sim`` after its last completed round (call it from ``on_round``)."""
    if sim.state is None:
        raise RuntimeError("nothing to checkpoint: the simulator has not been initialised")
    fed = sim.fed
    tensors: dict[str, Tensor] = {}
    for k, v in sim.state.adapter.items():
        tensors[f"server.adapter.{k}"] = v
    for k, v in sim.state.pending.items():
        tensors[f"server.pending.{k}"] = v
    for k, v in {**fed.adapted.get_state(), **fed.adapted.residual_state()}.items():
        tensors[f"model.{k}"] = v
    # Tensors each client keeps for itself (FedSA-LoRA's B): "client.<id>.<name>"; "client.start." their initial values.
    owners: list[tuple[int | str, dict[str, Tensor]]] = [*sim.local_state.items(), ("start", sim.local_start)]
    for c, own in owners:
        for k, v in own.items():
            tensors[f"client.{c}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "format": FORMAT_VERSION,
        "round": sim.state.round if not sim.rows else int(sim.rows[-1]["round"]),
        "server_round": sim.state.round,
        "config": sim.cfg.to_dict(),
        "rows": sim.rows,
        "comm": dataclasses.asdict(sim.comm),
        "one_time": sim.one_time,
        "init_seconds": sim.init_seconds,
        "python_random": _python_rng_state(),
        "numpy_random": _numpy_rng_state(),
        "trainer_state": sim.trainer.state_dict(),
        # Over Flower: the run id the nodes file their own tensors under, and each node's newest saved round.
        "node_stores": getattr(sim, "node_stores", None),
    }
    try:
        meta_json = json.dumps(meta, allow_nan=True)
    except TypeError as e:
        raise FedsbError(f"cannot checkpoint: the trainer's state_dict() is not JSON-serialisable ({e})") from None
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={META_KEY: meta_json})
    path = checkpoint_path(run_dir)
    atomic_write_bytes(path, data)
    return path


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read and check ``checkpoint.safetensors``; raises :class:`FedsbError` naming the problem."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FedsbError(
            f"{str(path)!r} is missing: the run stopped before its first checkpoint (round 0); "
            "start it again with --overwrite"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FedsbError(f"{str(path)!r} is not a valid checkpoint ({e}); the file is corrupt, start again with --overwrite") from None
    try:
        meta = json.loads(raw_meta) if raw_meta else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("rows"), list):
        raise FedsbError(f"{str(path)!r} has no readable fedsb checkpoint metadata (format {FORMAT_VERSION}); start again with --overwrite")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FedsbError(f"{str(path)!r} holds non-finite values in {bad[:3]}; the checkpoint is corrupt")
    if "rng.torch" not in tensors:
        raise FedsbError(f"{str(path)!r} lacks the RNG state; the checkpoint is incomplete")

    def group(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    cuda = group("rng.cuda.")
    clients: dict[int, dict[str, Tensor]] = {}
    for k, v in group("client.").items():
        cid, _, name = k.partition(".")
        cid = "-1" if cid == "start" else cid
        if not cid.lstrip("-").isdigit() or not name:
            raise FedsbError(f"{str(path)!r} holds a malformed client tensor {k!r}; the checkpoint is corrupt")
        clients.setdefault(int(cid), {})[name] = v
    return Checkpoint(
        round=int(meta["round"]),
        config=meta["config"],
        rows=meta["rows"],
        server_adapter=group("server.adapter."),
        server_pending=group("server.pending."),
        model_state=group("model."),
        client_state=clients,
        rng_torch=tensors["rng.torch"],
        rng_cuda=[cuda[k] for k in sorted(cuda, key=int)],
        meta=meta,
    )


def restore_checkpoint(sim: Resumable, ckpt: Checkpoint) -> int:
    """Put ``sim`` (built from the checkpoint's config) back in its checkpointed state; returns the next round."""
    fed = sim.fed
    residual = {k: v for k, v in ckpt.model_state.items() if k.endswith(".residual")}
    adapter = {k: v for k, v in ckpt.model_state.items() if not k.endswith(".residual")}
    expected = set(fed.adapted.get_state())
    expected_res = {f"{n}.residual" for n in fed.adapted.layers}
    if set(adapter) != expected or not set(residual) <= expected_res:
        missing = sorted(expected - set(adapter))[:3]
        extra = sorted(set(adapter) - expected)[:3]
        raise FedsbError(
            f"the checkpoint does not match the model built from its config (missing {missing}, unexpected {extra}); "
            "start again with --overwrite"
        )
    try:
        fed.adapted.set_state(adapter)
    except (KeyError, ValueError) as e:
        raise FedsbError(f"the checkpoint does not fit the model: {e}; start again with --overwrite") from None
    fed.adapted.set_residual_state(residual)
    local = set(fed.method.local_names(fed.adapted))
    for c, own in ckpt.client_state.items():
        if set(own) != local or not -1 <= c < len(fed.shards):
            raise FedsbError(f"the checkpoint's state of client {c} does not match the method's local tensors; "
                             "start again with --overwrite")
    sim.local_state = {c: dict(own) for c, own in ckpt.client_state.items() if c >= 0}
    sim.local_start = dict(ckpt.client_state.get(-1, {}))
    sim.state = ServerState(round=int(ckpt.meta["server_round"]), adapter=dict(ckpt.server_adapter), pending=dict(ckpt.server_pending))
    sim.rows = [dict(r) for r in ckpt.rows]
    for k, v in ckpt.meta["comm"].items():
        setattr(sim.comm, k, v)
    sim.one_time = dict(ckpt.meta["one_time"])
    sim.init_seconds = float(ckpt.meta["init_seconds"])
    if hasattr(sim, "_next_payload"):
        del sim._next_payload  # recomputed from the restored server state
    if ckpt.meta.get("node_stores") is not None and hasattr(sim, "node_stores"):
        stores = ckpt.meta["node_stores"]
        sim.node_stores = {"run_id": str(stores["run_id"]), "local_rounds": {str(k): int(v) for k, v in stores["local_rounds"].items()}}
    trainer_state = ckpt.meta.get("trainer_state")
    if trainer_state is not None:
        sim.trainer.load_state_dict(trainer_state)
    # RNG last, so nothing above perturbs the streams the next round draws from.
    version, internal, gauss = ckpt.meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    npr = ckpt.meta["numpy_random"]
    np.random.set_state((npr["name"], np.array(npr["keys"], dtype=np.uint32), npr["pos"], npr["has_gauss"], npr["cached"]))
    torch.set_rng_state(ckpt.rng_torch)
    if ckpt.rng_cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt.rng_cuda)
    return ckpt.round + 1


def remove_stale_temp(run_dir: str | Path) -> list[str]:
    """Delete temp files/dirs that an atomic write killed mid-way left in ``run_dir`` (``.NAME.*``)."""
    removed = []
    for entry in Path(run_dir).iterdir():
        if entry.name.startswith(".") and (entry.name.endswith(".tmp") or entry.is_dir()):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def strip_timing(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its wall-clock fields (for comparing runs)."""
    return {k: v for k, v in row.items() if k not in TIMING_FIELDS}
