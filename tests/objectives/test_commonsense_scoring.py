"""Commonsense records end to end through the causal-LM objective: one prompt for training and scoring, the
likelihood scorer against an oracle model in each of the 7 LLM-Adapters formats, per-source accuracies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from fedsb.models.load import load_model
from fedsb.objectives.causal_lm import IGNORE, CausalLMObjective
from fedsb.tasks.base import Example
from fedsb.tasks.commonsense import convert
from fedsb.tasks.prompts import alpaca_prompt


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny-llama", "causal-lm", seed=0)


def record(instruction: str, labels: list[str], gold: str, input_text: str = "") -> dict[str, str]:
    return {"instruction": f"{instruction}\n\nAnswer format: {'/'.join(labels)}", "input": input_text,
            "output": f"the correct answer is {gold}", "answer": gold}


def answers(n: int, word: str = "answer") -> list[str]:
    return [f"{word}{i}" for i in range(1, n + 1)]


# One record in each LLM-Adapters format (as in the commonsense folder), with its number of options.
FORMATS: dict[str, tuple[dict[str, str], int]] = {
    "boolq": (record("Please answer the following question with true or false, question: is the sky blue?",
                     ["true", "false"], "false"), 2),
    "piqa": (record("Please choose the correct solution to the question: how to open a jar?\n\nSolution1: twist the lid"
                    "\n\nSolution2: shout at it", answers(2, "solution"), "solution1"), 2),
    "social_i_qa": (record("Please choose the correct answer to the question: Why did Kai smile?\n\nAnswer1: happy "
                           "Answer2: sad Answer3: bored", answers(3), "answer3"), 3),
    "ARC-Challenge": (record("Please choose the correct answer to the question: Which is a metal?\n\nAnswer1: wood "
                             "Answer2: iron Answer3: glass Answer4: salt", answers(4), "answer2"), 4),
    "ARC-Easy": (record("Please choose the correct answer to the question: What is formed?\n\nAnswer1: an element "
                        "Answer2: two elements Answer3: a solution Answer4: an alloy Answer5: a compound", answers(5),
                        "answer4"), 5),
    "openbookqa": (record("Please choose the correct answer to the question: The sun is\n\nAnswer1: cold Answer2: a star "
                          "Answer3: a moon Answer4: wet", answers(4), "answer1", input_text="It shines."), 4),
    "winogrande": (record("Please choose the correct answer to fill in the blank to complete the given sentence: The cup "
                          "fell off the table because _ was slippery.\n\nOption1: cup Option2: table", answers(2, "option"),
                          "option2"), 2),
}


def example(source: str) -> Example:
    e = convert(FORMATS[source][0], f"{source}[0]")
    e.meta["source"] = source
    return e


class Cache:
    """What the scorer's prompt pass hands to its candidate pass: which example each row is."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def reorder_cache(self, idx: torch.Tensor) -> None:
        self.rows = [self.rows[i] for i in idx.tolist()]


class Oracle(nn.Module):
    """Puts high mass on the next token of a target sequence (a prompt followed by the response it should prefer),
    found by the row's prompt and indexed by the row's position ids; no ``logits_to_keep``, so every position."""

    def __init__(self, vocab: int, targets: list[list[int]], prompts: list[list[int]]) -> None:
        super().__init__()
        self.vocab, self.targets, self.prompts = vocab, targets, prompts

    def target_of(self, ids: list[int]) -> list[int]:
        for p, t in zip(self.prompts, self.targets, strict=True):
            if ids[: len(p)] == p:
                return t
        raise AssertionError("unknown prompt")

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, **kw):
        if past_key_values is None:
            rows = [self.target_of([t for t, m in zip(r.tolist(), mk.tolist(), strict=True) if m])
                    for r, mk in zip(input_ids, attention_mask, strict=True)]
            past_key_values = Cache(rows)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r, target in enumerate(past_key_values.rows):
            for j, pos in enumerate(position_ids[r].tolist()):
                if pos + 1 < len(target):
                    logits[r, j, target[pos + 1]] = 20.0
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def gold(e: Example) -> tuple[list[str], int]:
    """The candidates of a scored example and the index of the gold one."""
    assert e.choices is not None and e.label is not None
    return e.choices, e.label


def oracle_for(obj: CausalLMObjective, examples: list[Example], pick: list[int]) -> Oracle:
    """An oracle preferring choice ``pick[i]`` of example ``i``."""
    prompts = [obj.prompt_ids(e) for e in examples]
    targets = [p + obj.response_ids(gold(e)[0][k]) for p, e, k in zip(prompts, examples, pick, strict=True)]
    return Oracle(len(obj.tokenizer), targets, prompts)


def test_every_format_gives_its_candidates_and_the_gold_one_is_the_trained_response() -> None:
    for source, (rec, n) in FORMATS.items():
        e = example(source)
        assert e.choices is not None and len(e.choices) == n, source
        assert e.label is not None and e.choices[e.label] == e.response == rec["output"], source
        assert len(set(e.choices)) == n


@pytest.mark.parametrize("source", list(FORMATS))
def test_oracle_on_the_gold_response_is_scored_correct_and_a_wrong_oracle_is_not(tiny_llama, source: str) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 512, eval_mode="likelihood")
    e = example(source)
    assert e.label is not None and e.choices is not None
    oracle = oracle_for(obj, [e], [e.label])
    scores = obj.score_choices(oracle, [e])[0]
    assert max(range(len(scores)), key=scores.__getitem__) == e.label
    assert obj.evaluate(oracle, [e], batch_size=1)["accuracy"] == 1.0
    wrong_choice = (e.label + 1) % len(e.choices)
    wrong = oracle_for(obj, [e], [wrong_choice])
    scores = obj.score_choices(wrong, [e])[0]
    assert max(range(len(scores)), key=scores.__getitem__) == wrong_choice
    assert obj.evaluate(wrong, [e], batch_size=1)["accuracy"] == 0.0


def test_training_and_scoring_see_the_same_bytes_and_tokens(tiny_llama) -> None:
    """The scorer conditions on a byte-identical prefix of the training sequence, and the gold candidate's tokens
    are exactly the trained response tokens (checked through collate and the scorer's model calls)."""
    obj = CausalLMObjective(tiny_llama.tokenizer, 512, eval_mode="likelihood", chat_template="auto")
    examples = [example(s) for s in FORMATS]
    seen: list[dict[str, Any]] = []

    class Spy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            seen.append(kw)
            return self.inner(**kw)

    for e in examples:
        rec = FORMATS[e.meta["source"]][0]
        # bytes: the scorer's prompt text is the Alpaca prompt, and prompt + response is the training text
        assert obj.prompt_text(e).encode() == alpaca_prompt(rec["instruction"], rec["input"]).encode() == e.text.encode()
        choices, label = gold(e)
        assert (obj.prompt_text(e) + choices[label]).encode() == (e.text + str(e.response)).encode()
        # tokens: one training row (collate) against the scorer's prompt pass and gold candidate
        batch = obj.collate([e])
        row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        labels = batch["labels"][0][batch["attention_mask"][0].bool()].tolist()
        trained_prompt = [t for t, lab in zip(row, labels, strict=True) if lab == IGNORE]
        seen.clear()
        obj.score_choices(Spy(tiny_llama.model), [e])
        scored_prompt = seen[0]["input_ids"][0][seen[0]["attention_mask"][0].bool()].tolist()
        assert scored_prompt == trained_prompt == obj.prompt_ids(e)
        gold_tokens = obj.response_ids(choices[label])
        assert row == scored_prompt + gold_tokens  # the whole scored gold sequence is the training sequence
        # the candidate pass feeds the gold candidate's tokens (all but the last, which is only predicted)
        cand_rows = seen[1]["input_ids"]
        assert cand_rows[label][: len(gold_tokens) - 1].tolist() == gold_tokens[:-1]
    assert "### Input:\nIt shines." in example("openbookqa").text  # the with-input header is covered too


def test_per_source_accuracies_and_their_mean(tiny_llama) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 512, eval_mode="likelihood")
    sources = ["boolq", "piqa", "ARC-Easy", "social_i_qa", "boolq", "winogrande"]
    examples = []
    for i, s in enumerate(sources):
        e = example(s)
        e.text = e.text.replace("question", f"question {'long ' * (5 - i)}{i}")  # distinct prompts of other lengths
        examples.append(e)
    right = [True, False, True, False, True, True]
    pick = [gold(e)[1] if ok else (gold(e)[1] + 1) % len(gold(e)[0]) for e, ok in zip(examples, right, strict=True)]
    model = oracle_for(obj, examples, pick)
    m = obj.evaluate(model, examples, batch_size=4)
    per: dict[str, list[bool]] = {}
    for s, ok in zip(sources, right, strict=True):
        per.setdefault(s, []).append(ok)
    expected = {f"accuracy/{s}": sum(v) / len(v) for s, v in per.items()}
    assert m["accuracy"] == pytest.approx(4 / 6)  # micro: over examples
    assert {k: v for k, v in m.items() if k.startswith("accuracy/")} == pytest.approx(expected)
    assert m["accuracy_macro"] == pytest.approx(sum(expected.values()) / len(expected))  # macro: over sources
    assert m["accuracy_macro"] != pytest.approx(m["accuracy"])
    # one source: the plain accuracy only
    one = [e for e in examples if e.meta["source"] == "boolq"]
    assert set(obj.evaluate(oracle_for(obj, one, [gold(e)[1] for e in one]), one, batch_size=4)) == {"accuracy", "loss"}
