"""PNG plots of a run's curves (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

# A bare Figure renders with the Agg canvas without pyplot, so importing fedsb never changes the
# user's matplotlib backend (e.g. in a notebook).
from matplotlib.figure import Figure

from fedsb.io.rundir import atomic_write_bytes


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy and loss (and mean client training loss) per round."""
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ev = [r for r in rows if r.get("accuracy") is not None]
    ax1.plot([r["round"] for r in ev], [r["accuracy"] for r in ev], "o-", label="test accuracy")
    ax1.set_xlabel("round")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    ax1.legend()
    lv = [r for r in rows if r.get("loss") is not None]
    ax2.plot([r["round"] for r in lv], [r["loss"] for r in lv], "o-", label="test loss")
    tr = [r for r in rows if r.get("train_loss") is not None]
    ax2.plot([r["round"] for r in tr], [r["train_loss"] for r in tr], "s--", label="client train loss (mean)")
    ax2.set_xlabel("round")
    ax2.set_ylabel("loss")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
