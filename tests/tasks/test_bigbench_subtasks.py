"""A BIG-bench task with sub-tasks (arithmetic's layout) as a suite: sub-task selection, fixed split, sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError, UsageError
from fedsb.tasks import load_task
from fedsb.tasks.loader import load_eval_examples


def make_arithmetic(root: Path, n: int = 20) -> Path:
    """Three generative sub-tasks (two 2-digit, one 1-digit), each a task.json, and a top-level task.json without
    examples, as BIG-bench lays out arithmetic."""
    d = root / "arithmetic"
    d.mkdir()
    (d / "task.json").write_text(json.dumps({"name": "arithmetic", "description": "suite"}))
    for name, op in (("1_digit_addition", "+"), ("2_digit_addition", "+"), ("2_digit_multiplication", "*")):
        sub = d / name
        sub.mkdir()
        rows = [{"input": f"What is {i} {op} {i + 1}?", "target": str(eval(f"{i} {op} {i + 1}"))} for i in range(n)]
        (sub / "task.json").write_text(json.dumps({"name": name, "examples": rows}))
    return d


def cfg(path: Path, **kw) -> TaskConfig:
    return TaskConfig(name="bigbench-arithmetic", path=str(path), test_fraction=0.25, **kw)


def test_subtask_patterns_pick_sub_tasks_and_tag_their_source(tmp_path: Path) -> None:
    d = make_arithmetic(tmp_path)
    task = load_task(cfg(d, subtasks=["2_digit_*"]), "causal-lm")
    assert Counter(e.meta["source"] for e in task.train) == {"2_digit_addition": 15, "2_digit_multiplication": 15}
    assert Counter(e.meta["source"] for e in task.test) == {"2_digit_addition": 5, "2_digit_multiplication": 5}
    every = load_task(cfg(d), "causal-lm")  # no subtasks: all three
    assert {e.meta["source"] for e in every.train} == {"1_digit_addition", "2_digit_addition", "2_digit_multiplication"}


def test_split_is_fixed_whatever_the_run_seed_and_disjoint(tmp_path: Path) -> None:
    d = make_arithmetic(tmp_path)
    a = load_task(cfg(d, subtasks=["2_digit_addition"]), "causal-lm", seed=0)
    b = load_task(cfg(d, subtasks=["2_digit_addition"]), "causal-lm", seed=7)
    assert [e.text for e in a.test] == [e.text for e in b.test]
    assert not {e.text for e in a.test} & {e.text for e in a.train}
    name, evals = load_eval_examples(cfg(d, subtasks=["2_digit_addition"]))
    assert len(evals) == 20 and {e.meta["source"] for e in evals} == {"2_digit_addition"}


def test_subtask_errors_name_the_problem(tmp_path: Path) -> None:
    d = make_arithmetic(tmp_path)
    with pytest.raises(UsageError, match=r"\['3_digit_\*'\] match no sub-task of arithmetic; it has 1_digit_addition"):
        load_task(cfg(d, subtasks=["3_digit_*"]), "causal-lm")
    with pytest.raises(UsageError, match="without sub-tasks; drop task.subtasks"):
        load_task(cfg(d / "2_digit_addition", subtasks=["x"]), "causal-lm")
    with pytest.raises(UsageError, match="is a file"):
        load_task(cfg(d / "2_digit_addition" / "task.json", subtasks=["x"]), "causal-lm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedsbError):
        load_task(cfg(tmp_path / "empty", subtasks=["x"]), "causal-lm")
