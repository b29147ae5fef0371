"""Import a script of ``benchmarks/`` as a module (they are scripts, not a package; they import ``common``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str) -> Iterator[ModuleType]:
    """Yield ``benchmarks/<script>.py`` loaded as a module, with ``benchmarks/`` on the path while it is used."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{script}_bench", BENCH / f"{script}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))
