"""The ``fedsb compare`` Pareto plot: accuracy vs parameters communicated per client per round."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

# A bare Figure renders with the Agg canvas without pyplot, so importing fedsb never changes the
# user's matplotlib backend (e.g. in a notebook).
from matplotlib.figure import Figure

from fedsb.io.rundir import atomic_write_bytes
from fedsb.methods import METHODS


def plot_pareto(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """One marker per (method, rank) at (upload + download params per client per round, mean accuracy),
    error bars = std over seeds, log x axis; a method's ranks are joined by a line."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        pts = sorted((r for r in rows if r["method"] == m), key=lambda r: r["upload_params"] + r["download_params"])
        xs = [r["upload_params"] + r["download_params"] for r in pts]
        ys = [r["accuracy_mean"] for r in pts]
        es = [r["accuracy_std"] for r in pts]
        marker, color = METHODS[m].plot_style if m in METHODS else ("o", None)
        ax.errorbar(xs, ys, yerr=es, fmt=marker + ("-" if len(pts) > 1 else ""), color=color,
                    capsize=3, markersize=7, label=m, alpha=0.9)
        for x, y, r in zip(xs, ys, pts, strict=True):
            ax.annotate(f"r={r['rank']}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the rank labels at both ends
    ax.set_xlabel("parameters communicated per client per round (upload + download, log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
