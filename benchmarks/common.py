"""Helpers shared by the benchmark scripts: offline env, machine description, result files.

Every script writes ``benchmarks/results/<name>.{md,csv,json}`` (and usually a PNG) atomically, records the
machine (CPU model, cores, torch threads, torch version, load average: the box is shared) and prints its
figures last.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsb.environment import apply_offline_env, quiet_libraries

apply_offline_env()

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

Column = tuple[str, str, Callable[[Any], str]]  # (key, header, formatter)


def quiet() -> None:
    """No load reports or FutureWarnings from transformers in benchmark output."""
    import warnings

    quiet_libraries()
    warnings.filterwarnings("ignore", category=FutureWarning)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(threads: int | None = None) -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_commit": git_commit(),
    }


def machine_line(m: dict[str, Any]) -> str:
    load = ", ".join(str(x) for x in m["load_average_1_5_15"])
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}, "
            f"Python {m['python']}; load average at start {load} (shared box); {m['date_utc']}, commit {m['git_commit']}.")


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f(r.get(k)) if r.get(k) is not None else "-" for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, data: bytes) -> None:
    from fedsb.io.rundir import atomic_write_bytes

    atomic_write_bytes(path, data)


def write_results(name: str, rows: list[dict[str, Any]], markdown: str, meta: dict[str, Any]) -> list[Path]:
    """``<name>.md`` (given text), ``<name>.csv`` (rows) and ``<name>.json`` (meta + rows)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    paths = [RESULTS / f"{name}.md", RESULTS / f"{name}.csv", RESULTS / f"{name}.json"]
    atomic_write(paths[0], markdown.encode())
    atomic_write(paths[1], buf.getvalue().encode())
    atomic_write(paths[2], (json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n").encode())
    return paths


def save_png(fig: Any, name: str) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = RESULTS / f"{name}.png"
    atomic_write(path, buf.getvalue())
    return path


def rss_bytes() -> int:
    """Current resident set size of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def fmt(spec: str) -> Callable[[Any], str]:
    return lambda v: format(v, spec)
