"""Raw records from local JSON / JSONL files or Hugging Face datasets, each tagged with where it came from.

Every record carries a location string (``file:line`` for JSONL, ``file[item]`` for a JSON list, or
``dataset/split[row]``) so a bad example is reported with the place to fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedsb.errors import FedsbError

Record = tuple[str, dict[str, Any]]
TRAIN_NAMES = ("train",)
TEST_NAMES = ("test", "validation", "valid", "dev", "validation_matched")
EXTENSIONS = (".jsonl", ".json")


def read_records(path: str | Path) -> list[Record]:
    """Records of a JSONL file (one object per line) or a JSON file (a list of objects, or ``{"data": [...]}``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FedsbError(f"data file {str(p)!r} not found; check task.path") from None
    except UnicodeDecodeError:
        raise FedsbError(f"data file {str(p)!r} is not UTF-8 text; pass a JSON or JSONL file") from None
    if p.suffix == ".jsonl":
        return _jsonl(p, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{") and e.msg == "Extra data":
            return _jsonl(p, text)  # JSON Lines under a .json name
        raise FedsbError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); pass a JSON list of objects or a JSONL file") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise FedsbError(f"{p}: expected a JSON list of examples (or JSONL), got a {type(data).__name__}")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise FedsbError(f"{p}[{i}]: expected a JSON object, got {type(obj).__name__}")
    return [(f"{p}[{i}]", obj) for i, obj in enumerate(data)]


def _jsonl(p: Path, text: str) -> list[Record]:
    out: list[Record] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FedsbError(f"{p}:{i}: not valid JSON ({e.msg}); each line of a JSONL file must be one JSON object") from None
        if not isinstance(obj, dict):
            raise FedsbError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}")
        out.append((f"{p}:{i}", obj))
    return out


def split_files(directory: Path) -> dict[str, Path]:
    """``{"train": ..., "test": ...}`` for the data files of a directory (``train.json``, ``test.jsonl``, ...)."""
    found: dict[str, Path] = {}
    for split, names in (("train", TRAIN_NAMES), ("test", TEST_NAMES)):
        for name in names:
            for ext in EXTENSIONS:
                f = directory / f"{name}{ext}"
                if f.is_file() and split not in found:
                    found[split] = f
    return found


def offline() -> bool:
    return any(os.environ.get(k, "0").lower() not in ("0", "", "false") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_records(name: str, config: str | None = None) -> dict[str, list[Record]]:
    """All splits of a Hugging Face dataset, as records (needs the hub, or a copy in the local cache)."""
    import datasets

    where = f"{name}" + (f" ({config})" if config else "")
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        hint = " (offline: HF_DATASETS_OFFLINE is set)" if offline() else ""
        raise FedsbError(
            f"cannot load dataset {where} from the Hugging Face hub{hint}: {str(e).splitlines()[0][:160]}; "
            "pass a local file with --task.path instead"
        ) from None
    return {split: [(f"{name}/{split}[{i}]", dict(row)) for i, row in enumerate(d)] for split, d in ds.items()}
