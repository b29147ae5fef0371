"""``fedsb eval``: per-task accuracy and the mean, for a run directory, written to JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.cli.eval import expand_tasks


def cs(i: int, gold: str) -> dict:
    return {"instruction": f"Please answer the following question with true or false, question: q{i}?\n\n"
                           "Answer format: true/false", "input": "", "output": f"the correct answer is {gold}", "answer": gold}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalrun") / "run"
    rc = main(["run", "--model", "tiny-llama", "--task", "2_digit_addition", "--rounds", "1", "--steps", "1",
               "--task.max_test_examples", "4", "--init.samples", "4", "--train.threads", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_eval_commonsense_style_directory(tiny_run: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "commonsense"
    for name, n in (("boolq", 6), ("piqa2", 4)):
        (root / name).mkdir(parents=True)
        (root / name / "test.json").write_text(json.dumps([cs(i, "true" if i % 2 else "false") for i in range(n)]))
    assert expand_tasks([str(root)]) == [str(root / "boolq"), str(root / "piqa2")]
    out = tmp_path / "eval.json"
    rc = main(["eval", str(tiny_run), "--task", str(root), "--max-examples", "5", "--threads", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert set(rep["tasks"]) == {"boolq", "piqa2"}
    assert rep["tasks"]["boolq"]["examples"] == 5 and rep["tasks"]["piqa2"]["examples"] == 4
    assert rep["tasks"]["boolq"]["mode"] == "likelihood"
    accs = [t["accuracy"] for t in rep["tasks"].values()]
    assert rep["mean_accuracy"] == pytest.approx(sum(accs) / 2)
    assert "mean accuracy over 2 task(s)" in capsys.readouterr().out


def test_eval_generate_mode_and_adapter_dir(tiny_run: Path, tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text("".join(json.dumps({"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    rc = main(["eval", str(tiny_run / "adapter"), "--task", str(f), "--mode", "generate", "--threads", "1", "--no-progress"])
    assert rc == 0
    rep = json.loads((tiny_run / "eval.json").read_text())
    assert rep["tasks"]["g"]["mode"] == "generate" and rep["tasks"]["g"]["examples"] == 3


def test_eval_errors(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path), "--task", "x"]) == 2
    assert "neither config.toml" in capsys.readouterr().err
