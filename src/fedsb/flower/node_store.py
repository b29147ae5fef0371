"""What a SuperNode keeps on its own disk: the tensors a personalised method never sends (FedSA-LoRA's B and
task head), saved after every round the node trains, so that a resumed run continues from them.

A resume is a new Flower run, whose ``Context.state`` starts empty; the server holds none of these tensors (it
must not), so without this store a resumed node would restart them from their initial values. The directory is
the node operator's choice, never the server's: ``state-dir`` in the node config, else the environment variable
``FEDSB_NODE_STATE_DIR`` (``fedsb.flower.simulate`` sets it under the run directory, since one person runs every
party there). Layout: ``<dir>/<run-id>/partition-<p>/round-<r>.safetensors``, ``run-id`` the random id the server
draws for a run and keeps in its checkpoint (so a resume finds the same files, and another run, even with the
same config, never touches them).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from flwr.app import Context
from torch import Tensor

from fedsb.errors import FedsbError
from fedsb.io.state_io import load_tensors, save_tensors

STATE_DIR_KEY = "state-dir"
STATE_DIR_ENV = "FEDSB_NODE_STATE_DIR"
_ROUND_FILE = re.compile(r"round-(\d+)\.safetensors")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def new_run_id() -> str:
    return secrets.token_hex(16)


def store_dir(context: Context, run_id: str, partition: int) -> Path | None:
    """This node's directory for run ``run_id`` (None: the node keeps nothing on disk)."""
    root = context.node_config.get(STATE_DIR_KEY) or os.environ.get(STATE_DIR_ENV)
    if not root:
        return None
    if not _RUN_ID.fullmatch(run_id):  # it names a directory: nothing but 32 hex digits
        raise FedsbError(f"the server sent run id {run_id[:40]!r}, which is not 32 hex digits; server and node fedsb versions differ")
    return Path(str(root)).expanduser() / run_id / f"partition-{partition}"


def latest_round(store: Path) -> int:
    """The round of the newest tensors saved (0: none)."""
    return (saved_rounds(store) or [0])[-1]


def saved_rounds(store: Path) -> list[int]:
    if not store.is_dir():
        return []
    return sorted(int(m.group(1)) for p in store.iterdir() if (m := _ROUND_FILE.fullmatch(p.name)))


def _path(store: Path, rnd: int) -> Path:
    return store / f"round-{rnd:06d}.safetensors"


def save_round(store: Path, rnd: int, tensors: dict[str, Tensor]) -> None:
    """Write the node's own tensors after training round ``rnd`` (atomically). The server checkpoints every
    round before it sends the next, so a resume restarts at round ``rnd - 1`` at the earliest: the newest file
    before ``rnd`` is kept with it and older ones are removed."""
    save_tensors(_path(store, rnd), tensors, metadata={"round": str(rnd)})
    older = [r for r in saved_rounds(store) if r < rnd]
    for r in older[:-1]:
        _path(store, r).unlink(missing_ok=True)


def restore(store: Path, upto: int, shapes: dict[str, tuple[int, ...]], names: set[str]) -> tuple[int, dict[str, Tensor]]:
    """The newest tensors saved at or before round ``upto`` (the server's checkpoint), as ``(round, tensors)``;
    ``(0, {})`` when the node had not trained by then. Files of later rounds, which the resumed run trains
    again, are removed."""
    rounds = saved_rounds(store)
    for r in rounds:
        if r > upto:
            _path(store, r).unlink(missing_ok=True)
    kept = [r for r in rounds if r <= upto]
    if not kept:
        return 0, {}
    path = _path(store, kept[-1])
    own = load_tensors(path)
    if set(own) != names or any(tuple(t.shape) != shapes.get(k) for k, t in own.items()):
        raise FedsbError(f"{path} does not hold this model's personal tensors; it belongs to another run: remove it "
                         "or point the node's state-dir elsewhere")
    return kept[-1], own

