"""A suite of data sets (a folder of data folders) as one task: unions of the splits, sources, per-source caps."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError, UsageError
from fedsb.tasks import load_task
from fedsb.tasks.loader import load_eval_examples


def arc(i: int) -> dict:
    gold = f"answer{i % 4 + 1}"
    return {"instruction": f"Please choose the correct answer to the question: arc q{i}?\n\nAnswer1: a Answer2: b "
                           "Answer3: c Answer4: d\n\nAnswer format: answer1/answer2/answer3/answer4",
            "input": "", "output": f"the correct answer is {gold}", "answer": gold}


def boolq(i: int) -> dict:
    gold = "true" if i % 3 else "false"
    return {"instruction": f"Please answer the following question with true or false, question: boolq q{i}?\n\n"
                           "Answer format: true/false", "input": "", "output": f"the correct answer is {gold}", "answer": gold}


def piqa(i: int) -> dict:
    gold = f"solution{i % 2 + 1}"
    return {"instruction": f"Please choose the correct solution to the question: piqa q{i}?\n\nSolution1: x\n\n"
                           "Solution2: y\n\nAnswer format: solution1/solution2", "input": "",
            "output": f"the correct answer is {gold}", "answer": gold}


def make_suite(root: Path, n_train: int = 30, n_test: int = 12) -> Path:
    """arc and boolq with train + test, piqa with test only (as the LLM-Adapters folder), and a stray folder."""
    for name, row, splits in (("arc", arc, ("train", "test")), ("boolq", boolq, ("train", "test")), ("piqa", piqa, ("test",))):
        d = root / name
        d.mkdir(parents=True)
        for split in splits:
            base = 0 if split == "train" else 1000
            n = n_train if split == "train" else n_test
            (d / f"{split}.json").write_text(json.dumps([row(base + i) for i in range(n)]), encoding="utf-8")
    (root / "notes").mkdir()  # no data files: not a source
    (root / "README.md").write_text("not data")
    return root


def question(e) -> str:
    return e.text.split("question: ")[1].split("?")[0]


def test_suite_is_the_union_of_its_folders_tagged_by_source(tmp_path: Path) -> None:
    root = make_suite(tmp_path / "commonsense")
    data = load_task(TaskConfig(path=str(root), format="commonsense"), "causal-lm", seed=5)
    assert data.name == "commonsense"
    # piqa has no train split: it contributes test examples only, and nothing is carved out of arc/boolq's train
    assert Counter(e.meta["source"] for e in data.train) == {"arc": 30, "boolq": 30}
    assert Counter(e.meta["source"] for e in data.test) == {"arc": 12, "boolq": 12, "piqa": 12}
    for e in data.train + data.test:
        assert question(e).startswith(e.meta["source"])  # each example tagged with its own folder
    assert {question(e) for e in data.train}.isdisjoint(question(e) for e in data.test)
    piqa_test = [e for e in data.test if e.meta["source"] == "piqa"]
    assert all(e.choices is not None and len(e.choices) == 2 for e in piqa_test)
    # the same files, the same order, whatever the run seed
    again = load_task(TaskConfig(path=str(root), format="commonsense"), "causal-lm", seed=11)
    assert [e.text for e in again.train] == [e.text for e in data.train]
    assert [e.text for e in again.test] == [e.text for e in data.test]
    # the union is mixed (not one source after the other), so a prefix or a contiguous shard holds every source
    assert {e.meta["source"] for e in data.test[:12]} == {"arc", "boolq", "piqa"}


def test_suite_format_auto_and_eval_examples(tmp_path: Path) -> None:
    root = make_suite(tmp_path / "cs", n_train=4, n_test=3)
    data = load_task(TaskConfig(path=str(root)), "causal-lm")
    assert len(data.train) == 8 and len(data.test) == 9
    name, examples = load_eval_examples(TaskConfig(path=str(root)))
    assert name == "cs" and Counter(e.meta["source"] for e in examples) == {"arc": 3, "boolq": 3, "piqa": 3}


def test_per_source_caps_are_fixed_subsets_independent_of_the_run_seed(tmp_path: Path) -> None:
    root = make_suite(tmp_path / "cs", n_train=40, n_test=20)
    cfg = TaskConfig(path=str(root), max_train_per_source=7, max_test_per_source=5)
    a = load_task(cfg, "causal-lm", seed=0)
    b = load_task(cfg, "causal-lm", seed=123)
    assert Counter(e.meta["source"] for e in a.train) == {"arc": 7, "boolq": 7}
    assert Counter(e.meta["source"] for e in a.test) == {"arc": 5, "boolq": 5, "piqa": 5}
    assert [e.text for e in a.train] == [e.text for e in b.train]
    assert [e.text for e in a.test] == [e.text for e in b.test]
    # a random subset, not the first k of each file
    firsts = {f"{s} q{i}" for s in ("arc", "boolq") for i in range(7)}
    assert {question(e) for e in a.train} != firsts
    # a cap above a source's size keeps all of it; caps do not touch what they do not name
    big = load_task(TaskConfig(path=str(root), max_test_per_source=1000), "causal-lm")
    assert len(big.test) == 60 and len(big.train) == 80


def test_caps_on_a_task_without_sources(tmp_path: Path) -> None:
    d = tmp_path / "arc"
    d.mkdir()
    (d / "train.json").write_text(json.dumps([arc(i) for i in range(30)]))
    (d / "test.json").write_text(json.dumps([arc(i) for i in range(100, 130)]))
    cfg = TaskConfig(path=str(d), max_train_per_source=10, max_test_per_source=4)
    a, b = load_task(cfg, "causal-lm", seed=0), load_task(cfg, "causal-lm", seed=9)
    assert (len(a.train), len(a.test)) == (10, 4)
    assert [e.text for e in a.test] == [e.text for e in b.test] and [e.text for e in a.train] == [e.text for e in b.train]
    order = [int(question(e).split("q")[1]) for e in a.train]
    assert order == sorted(order)  # a subset in file order


def test_caps_are_validated() -> None:
    with pytest.raises(UsageError, match="task.max_train_per_source = 0"):
        TaskConfig(max_train_per_source=0)
    with pytest.raises(UsageError, match="task.max_test_per_source = -1"):
        TaskConfig(max_test_per_source=-1)


def test_local_only_task_name_asks_for_the_path() -> None:
    with pytest.raises(UsageError) as err:
        load_task(TaskConfig(name="llm-adapters-commonsense", format="commonsense"), "causal-lm")
    msg = str(err.value)
    assert "--task.path /path/to/commonsense" in msg and "\n" not in msg


def test_folder_without_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FedsbError, match="one level down"):
        load_task(TaskConfig(path=str(tmp_path / "empty")), "causal-lm")


def test_real_commonsense_suite_with_the_preset_caps(shared_data: Path) -> None:
    cfg = TaskConfig(path=str(shared_data / "commonsense"), format="commonsense", max_train_per_source=200, max_test_per_source=50)
    data = load_task(cfg, "causal-lm")
    assert Counter(e.meta["source"] for e in data.train) == {s: 200 for s in ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa")}
    assert Counter(e.meta["source"] for e in data.test) == {s: 50 for s in (
        "ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa", "social_i_qa", "winogrande")}
    assert all(e.choices and e.label is not None and e.choices[e.label] == e.response for e in data.train + data.test)
