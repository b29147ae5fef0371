"""Task loaders on small fixtures in every format, bad-data messages, and smoke loads of the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError
from fedsb.tasks import load_task
from fedsb.tasks.loader import load_eval_examples
from fedsb.tasks.records import read_records


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cs_row(i: int) -> dict:
    gold = f"answer{i % 3 + 1}"
    return {"instruction": f"Please choose the correct answer to the question: q{i}?\n\nAnswer1: a Answer2: b Answer3: c"
                           "\n\nAnswer format: answer1/answer2/answer3",
            "input": "", "output": f"the correct answer is {gold}", "answer": gold}


def test_commonsense_directory_with_splits(tmp_path: Path) -> None:
    d = tmp_path / "arc"
    d.mkdir()
    (d / "train.json").write_text(json.dumps([cs_row(i) for i in range(6)]))
    (d / "test.json").write_text(json.dumps([cs_row(i) for i in range(6, 9)]))
    data = load_task(TaskConfig(name="x", path=str(d)), "causal-lm")
    assert data.name == "arc" and len(data.train) == 6 and len(data.test) == 3
    e = data.test[0]
    assert e.choices == ["the correct answer is answer1", "the correct answer is answer2", "the correct answer is answer3"]
    assert e.choices[e.label] == e.response == "the correct answer is answer1"
    assert e.answer == "answer1" and e.meta["answer_type"] == "answer"
    assert e.text.startswith("Below is an instruction") and e.text.endswith("### Response:\n")


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    rows = [{"question": f"Q{i}: how many?", "answer": f"2 * {i} = <<2*{i}={2 * i}>>{2 * i}\n#### {2 * i:,}"} for i in range(1000, 1010)]
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    data = load_task(TaskConfig(name="gsm", path=str(f), test_fraction=0.2), "causal-lm")
    assert len(data.train) == 8 and len(data.test) == 2
    e = next(x for x in data.train + data.test if x.text.find("Q1000:") >= 0)
    assert e.response == "2 * 1000 = 2000\nThe answer is 2000"  # calculator annotation gone, commas dropped
    assert e.answer == "2000" and e.meta["answer_type"] == "number"


def test_metamath_json(tmp_path: Path) -> None:
    f = tmp_path / "mm.json"
    f.write_text(json.dumps([{"query": f"What is {i}+1?", "response": f"{i}+1={i + 1}. The answer is: {i + 1}"} for i in range(5)]))
    name, ex = load_eval_examples(TaskConfig(path=str(f)))
    assert name == "mm" and ex[2].answer == "3" and ex[2].meta["answer_type"] == "number"


def test_nli_drops_examples_without_gold_label(tmp_path: Path) -> None:
    rows = [{"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0},
            {"premise": "A dog runs.", "hypothesis": "A cat runs.", "label": -1},
            {"premise": "Kids play.", "hypothesis": "Nobody plays.", "label": "contradiction"},
            {"sentence1": "It rains.", "sentence2": "It is wet.", "gold_label": "-"}]
    f = write_jsonl(tmp_path / "snli.jsonl", rows[:3])
    _, ex = load_eval_examples(TaskConfig(path=str(f)))
    assert [e.answer for e in ex] == ["entailment", "contradiction"]
    assert ex[0].choices == ["entailment", "neutral", "contradiction"] and ex[1].label == 2
    g = write_jsonl(tmp_path / "raw.jsonl", [rows[3], {"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}])
    _, ex2 = load_eval_examples(TaskConfig(path=str(g)))
    assert [e.label for e in ex2] == [1]
    cls = load_task(TaskConfig(path=str(f), format="nli", test_fraction=0.5), "classification")
    assert cls.labels == ["entailment", "neutral", "contradiction"]
    assert all("[SEP]" in e.text for e in cls.train + cls.test)


def test_bigbench_multiple_choice_and_generative_as_instructions(tmp_path: Path) -> None:
    mc = {"task_prefix": "Pick the colour.", "keywords": [], "examples": [
        {"input": f"item {i}", "target_scores": {"red": int(i % 2 == 0), "blue": int(i % 2 == 1)}} for i in range(10)]}
    gen = {"keywords": ["numerical response"], "examples": [{"input": f"What is {i} plus 1?", "target": str(i + 1)} for i in range(10)]}
    (tmp_path / "mc").mkdir()
    (tmp_path / "mc" / "task.json").write_text(json.dumps(mc))
    (tmp_path / "gen.json").write_text(json.dumps(gen))
    data = load_task(TaskConfig(path=str(tmp_path / "mc"), test_fraction=0.2), "causal-lm")
    e = data.train[0]
    assert e.choices == ["red", "blue"] and e.response == e.choices[e.label]
    assert "Pick the colour.\n\nitem" in e.text
    _, g = load_eval_examples(TaskConfig(path=str(tmp_path / "gen.json")))
    assert g[3].response == "4" and g[3].choices is None and "Answer with the number only." in g[3].text


def test_generic_jsonl_fields(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [{"q": f"Say {i}", "a": str(i)} for i in range(5)])
    _, ex = load_eval_examples(TaskConfig(path=str(f), prompt_field="q", response_field="a"))
    assert ex[4].response == "4" and "Say 4" in ex[4].text
    with pytest.raises(FedsbError, match=r"d\.jsonl:1: missing field 'prompt'"):
        load_eval_examples(TaskConfig(path=str(f), format="jsonl"))


def test_bad_data_messages_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "q", "answer": "1\\n#### 1"}\n{not json}\n')
    with pytest.raises(FedsbError, match=r"bad\.jsonl:2: not valid JSON"):
        read_records(f)
    g = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 3"}, {"question": "q", "answer": "no final"}])
    with pytest.raises(FedsbError, match=r"g\.jsonl:2: GSM8K field 'answer' must end with '#### <number>'"):
        load_eval_examples(TaskConfig(path=str(g)))
    h = write_jsonl(tmp_path / "h.jsonl", [{"foo": 1}])
    with pytest.raises(FedsbError, match=r"h\.jsonl:1: cannot tell the data format"):
        load_eval_examples(TaskConfig(path=str(h)))
    n = write_jsonl(tmp_path / "n.jsonl", [{"premise": "p", "hypothesis": "h", "label": 7}])
    with pytest.raises(FedsbError, match=r"n\.jsonl:1: NLI label"):
        load_eval_examples(TaskConfig(path=str(n)))
    with pytest.raises(FedsbError, match="not found"):
        load_task(TaskConfig(path=str(tmp_path / "missing.json")), "causal-lm")


def test_hub_name_offline_gives_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FedsbError, match="--task.path"):
        load_task(TaskConfig(name="no-such-user/no-such-dataset-fedsb"), "causal-lm")


def test_builtin_arithmetic_task() -> None:
    data = load_task(TaskConfig(name="2_digit_addition"), "causal-lm")
    assert len(data.train) + len(data.test) == 1000
    e = data.test[0]
    assert e.text.rstrip().endswith("### Response:") and "Answer with the number only." in e.text
    assert e.response in e.choices and e.choices[e.label] == e.answer


# --- the real files in ../shared/data ---------------------------------------------------------------------

COMMONSENSE = ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa", "social_i_qa", "winogrande"]


@pytest.mark.parametrize("name", COMMONSENSE)
def test_real_commonsense_test_sets(shared_data: Path, name: str) -> None:
    _, ex = load_eval_examples(TaskConfig(path=str(shared_data / "commonsense" / name)))
    assert len(ex) > 400
    assert all(e.choices and e.label is not None and e.answer in e.choices[e.label] for e in ex)


def test_real_gsm8k_and_bigbench(shared_data: Path) -> None:
    data = load_task(TaskConfig(path=str(shared_data / "gsm8k")), "causal-lm")
    assert (len(data.train), len(data.test)) == (7473, 1319)
    assert all(e.response.endswith(f"The answer is {e.answer}") for e in data.train)
    for sub in ("intent_recognition", "presuppositions_as_nli", "arithmetic/3_digit_subtraction"):
        d = load_task(TaskConfig(path=str(shared_data / "bigbench" / sub)), "causal-lm")
        assert d.train and d.test and all(e.response for e in d.train)


def test_task_label_names_the_data_file_not_the_default_builtin(tmp_path: Path) -> None:
    from fedsb.config import TaskConfig

    assert TaskConfig().label == "intent_recognition"
    assert TaskConfig(path=str(tmp_path / "epistemic_reasoning" / "task.json")).label == "epistemic_reasoning"
    assert TaskConfig(path=str(tmp_path / "silo-a.jsonl"), format="jsonl").label == "silo-a"
