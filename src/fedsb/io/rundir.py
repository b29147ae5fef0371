"""A run's output directory: atomic writes of config, metrics, summary, adapter and plot."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w

from fedsb.errors import UsageError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    ``mode`` (e.g. ``0o600`` for private keys) is set on the temp file before the rename; the temp file is
    created 0600 by ``mkstemp``, so a secret is never readable by others, not even for a moment. Without
    ``mode`` the file gets the usual ``0666 & ~umask``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp directory beside ``out`` to fill; on success it replaces ``out`` in one rename, on failure it is
    removed and ``out`` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def to_toml(data: dict[str, Any]) -> str:
    """Serialise a resolved config as TOML (tomli-w); None values, which TOML cannot hold, are omitted."""

    def drop_none(d: dict[str, Any]) -> dict[str, Any]:
        return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(drop_none(data))


class RunDir:
    """Files of one run. ``metrics.jsonl`` is rewritten atomically with all rows so far after each round."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        p = Path(path)
        if p.exists() and any(p.iterdir()):
            if not overwrite:
                raise UsageError(f"run directory {str(p)!r} already exists; pass --overwrite to replace it, --resume to continue it, or --out elsewhere")
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, default=str) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_config(self, cfg: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.toml", to_toml(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)
