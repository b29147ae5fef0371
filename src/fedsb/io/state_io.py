"""Save and load adapter/server tensors with safetensors (never pickle), validating what comes back."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from fedsb.errors import FedsbError
from fedsb.io.rundir import atomic_write_bytes


def canonical_header(data: bytes) -> bytes:
    """Safetensors bytes with the ``__metadata__`` keys sorted.

    safetensors serialises metadata from a Rust hash map whose order changes between processes, so the same
    tensors and metadata would otherwise give different bytes (breaking bit-identical resumed runs).
    """
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__")
    if not meta or len(meta) < 2:
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to an 8-byte boundary
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, canonical_header(data))


def load_tensors(path: Path, expect_finite: bool = True) -> dict[str, Tensor]:
    if not path.is_file():
        raise FedsbError(f"{str(path)!r} is missing; is this a complete fedsb run directory?")
    try:
        out = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FedsbError(f"{str(path)!r} is not a valid safetensors file ({e}); re-export it") from None
    if expect_finite:
        bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise FedsbError(f"{str(path)!r} holds non-finite values in {bad[:3]}; the file is corrupt")
    return out


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedsbError(f"{str(path)!r} is missing; is this a complete fedsb run directory?") from None
    except json.JSONDecodeError as e:
        raise FedsbError(f"{str(path)!r} is not valid JSON ({e})") from None
