"""Named config presets (``--preset NAME``), one TOML file each in this folder."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any


def load_presets() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in resources.files("fedsb.presets").iterdir():
        if f.name.endswith(".toml"):
            out[f.name.removesuffix(".toml")] = tomllib.loads(f.read_text(encoding="utf-8"))
    return out
