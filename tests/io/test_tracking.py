"""Experiment tracking: metrics rows arrive in TensorBoard's event files, read back with TensorBoard's reader."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsb.errors import UsageError
from fedsb.io.tracking import check_backends, make_trackers, scalars


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_rows_become_tensorboard_scalars(tmp_path) -> None:
    rows = [
        {"round": 0, "accuracy": 0.25, "loss": 1.5, "seconds": 1.0},
        {"round": 1, "accuracy": 0.5, "loss": 1.0, "train_loss": 1.2, "skipped": False, "rejected": [],
         "epsilon_clients": {"0": 0.5, "1": "inf"}, "dp_mode": "sample"},
    ]
    trackers = make_trackers(["tensorboard"], tmp_path, "fed-sb-test", {"method": "fed-sb"})
    for r in rows:
        trackers(r)
    trackers.close()
    got = read_scalars(tmp_path / "tensorboard")
    assert got["accuracy"] == [(0, 0.25), (1, 0.5)]
    assert got["train_loss"] == [(1, pytest.approx(1.2))]
    assert got["epsilon_clients/0"] == [(1, 0.5)]
    assert "skipped" not in got and "round" not in got and "dp_mode" not in got and "epsilon_clients/1" not in got


def test_scalars_skip_non_numeric_and_non_finite() -> None:
    assert dict(scalars({"round": 3, "a": 1, "b": True, "c": float("nan"), "d": "x", "e": {"f": 2.0}})) == {"a": 1.0, "e/f": 2.0}


def test_unknown_or_missing_backend_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown backend 'tensorbord'"):
        check_backends(["tensorbord"])
    import importlib.util

    missing = [b for b in ("mlflow", "wandb") if importlib.util.find_spec(b) is None]
    if missing:
        with pytest.raises(UsageError, match=f"pip install {missing[0]}"):
            check_backends([missing[0]])


def test_fedsb_run_with_tensorboard_writes_every_row(tmp_path) -> None:
    import json

    from fedsb.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-bert", "--rank", "4", "--rounds", "2", "--steps", "2", "--init.samples", "4",
                 "--task.max_test_examples", "16", "--tracking.backends", "tensorboard", "--out", str(out),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got = read_scalars(out / "tensorboard")
    assert got["accuracy"] == [(r["round"], pytest.approx(r["accuracy"])) for r in rows]
    assert [s for s, _ in got["upload_bytes_round"]] == [1, 2]


def test_fedsb_run_refuses_a_missing_tracker_before_any_work(tmp_path, monkeypatch) -> None:
    import importlib.util

    from fedsb.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-bert", "--tracking.backends", "mlflow", "--out", str(out)]) == 2
    assert not out.exists()
