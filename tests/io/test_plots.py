"""Plots render headless without touching the user's matplotlib backend."""

from __future__ import annotations

import subprocess
import sys


def test_importing_and_plotting_keeps_the_users_backend(tmp_path) -> None:
    code = f"""
import matplotlib
matplotlib.use("svg")  # what a notebook user might have chosen
from pathlib import Path
from fedsb.io.plots import plot_curves
from fedsb.io.compare_plot import plot_pareto
plot_curves([{{"round": 0, "accuracy": 0.5, "loss": 1.0}}, {{"round": 1, "accuracy": 0.7, "loss": 0.8, "train_loss": 0.9}}],
            Path({str(tmp_path / 'c.png')!r}), "t")
plot_pareto([{{"method": "fed-sb", "rank": 4, "upload_params": 10, "download_params": 10, "accuracy_mean": 0.5,
              "accuracy_std": 0.1}}], Path({str(tmp_path / 'p.png')!r}), "t")
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "svg"
    for name in ("c.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
