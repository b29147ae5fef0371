"""benchmarks/task_probe.py: the probe finds a signal that is there, none where labels are noise; a tiny-model run."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.benchmarks.loader import load_benchmark


@pytest.fixture(scope="module")
def tp():
    yield from load_benchmark("task_probe")


def test_probe_reads_a_linear_signal_and_not_noise(tp: Any) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = (x[:, 3] > 0).long()  # a linear rule on one feature
    assert tp.probe(x, y, 2, seed=0)["accuracy"] > 0.9
    noise = torch.randint(0, 2, (400,), generator=g)  # labels independent of the features
    r = tp.probe(x, noise, 2, seed=0)
    assert r["accuracy"] < r["majority"] + 0.12
    assert r["n_test"] == 80 and r["weight_decay"] in tp.WEIGHT_DECAYS


def test_weight_decay_is_never_picked_on_the_held_out_part(tp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = tp._accuracy

    def spy(w: Any, b: Any, x: Any, y: Any) -> float:
        seen.append(len(y))
        return real(w, b, x, y)

    monkeypatch.setattr(tp, "_accuracy", spy)
    tp.probe(torch.randn(200, 4), torch.randint(0, 3, (200,)), 3, seed=1)
    # len(WEIGHT_DECAYS) validation scores on 20% of the 160 training rows, then one held-out score on 40 rows
    assert seen == [32] * len(tp.WEIGHT_DECAYS) + [40]


def test_a_tiny_model_run_writes_one_row_per_task(tp: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import common  # benchmarks/common.py, on the path while the module is loaded

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    words = ["red", "blue"]
    task = {"examples": [{"input": f"the {words[i % 2]} thing number {i}", "target_scores": {w: int(w == words[i % 2]) for w in words}}
                         for i in range(40)]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    tp.main(["--tasks", str(path), "--model", "tiny-bert", "--splits", "2", "--max-length", "16", "--name", "probe_t"])
    rows = json.loads((tmp_path / "probe_t.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["examples"] == 40 and rows[0]["classes"] == 2
    assert {f"{v}_acc" for v in tp.VIEWS} <= rows[0].keys() and rows[0]["signal"] in ("yes", "weak", "no")


def test_a_missing_task_file_is_a_one_line_error(tp: Any, tmp_path: Any) -> None:
    with pytest.raises(SystemExit, match="not found; pass an existing BIG-bench task.json"):
        tp.main(["--tasks", str(tmp_path / "nope.json")])
