"""Optional experiment tracking: every metrics row also goes to TensorBoard, MLflow or Weights & Biases.

A tracker is a per-round callback (the same hook that writes ``metrics.jsonl``), so both engines feed it
without knowing it exists. Off by default; ``tracking.backends = ["tensorboard"]`` (or ``mlflow``,
``wandb``) turns one on. Only numeric fields are logged, each as a scalar at step = round (nested numeric
dicts such as ``epsilon_clients`` become ``epsilon_clients/0``...). The backend packages are optional
dependencies: a backend that is not installed is refused with a one-line error naming the package.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedsb.errors import UsageError

BACKENDS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class Tracker(Protocol):
    """Receives each metrics row as it is produced, then ``close`` once."""

    def log_row(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(row: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The finite numeric fields of a metrics row as (tag, value); booleans and the round number are left out."""
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if key == "round" and not prefix:
            continue
        if isinstance(value, dict):
            yield from scalars(value, prefix=f"{tag}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


class TensorBoardTracker:
    """Scalars in a TensorBoard event file under ``<run dir>/tensorboard``."""

    def __init__(self, log_dir: Path, run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("run", run_name, 0)

    def log_row(self, row: dict[str, Any]) -> None:
        for tag, value in scalars(row):
            self.writer.add_scalar(tag, value, global_step=int(row["round"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run (the tracking URI and experiment come from MLflow's own environment variables)."""

    def __init__(self, run_name: str, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v) for k, v in _flatten(config).items()})

    def log_row(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({t.replace("/", ".") : v for t, v in scalars(row)}, step=int(row["round"]))

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    """One Weights & Biases run (mode, project and entity come from W&B's own environment variables)."""

    def __init__(self, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(name=run_name, config=config, reinit=True)

    def log_row(self, row: dict[str, Any]) -> None:
        self.run.log(dict(scalars(row)), step=int(row["round"]))

    def close(self) -> None:
        self.run.finish()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


class Trackers:
    """The configured trackers behind one callback."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def __call__(self, row: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_row(row)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def check_backends(backends: Sequence[str]) -> None:
    """Refuse unknown or uninstalled backends before a run starts (one line, names the fix)."""
    import importlib.util

    for b in backends:
        if b not in BACKENDS:
            raise UsageError(f"tracking.backends: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        if importlib.util.find_spec(PACKAGES[b]) is None:
            raise UsageError(f"tracking.backends = [{b!r}] needs the {PACKAGES[b]} package: pip install {PACKAGES[b]}")


def make_trackers(backends: Sequence[str], run_dir: Path, run_name: str, config: dict[str, Any]) -> Trackers:
    """The trackers named in ``backends`` for a run writing to ``run_dir``."""
    check_backends(backends)
    made: list[Tracker] = []
    for b in backends:
        if b == "tensorboard":
            made.append(TensorBoardTracker(run_dir / "tensorboard", run_name))
        elif b == "mlflow":
            made.append(MLflowTracker(run_name, config))
        else:
            made.append(WandbTracker(run_name, config))
    return Trackers(made)
