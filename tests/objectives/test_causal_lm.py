"""Causal-LM objective: one prompt path, response-only loss, left padding, likelihood scoring, generation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from fedsb.models.load import load_model
from fedsb.objectives.causal_lm import IGNORE, CausalLMObjective
from fedsb.tasks.base import Example
from fedsb.tasks.prompts import alpaca_prompt


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny-llama", "causal-lm", seed=0)


@pytest.fixture(scope="module")
def tiny_gpt2():
    return load_model("tiny-gpt2", "causal-lm", seed=0)


def ex(q: str, a: str, choices: list[str] | None = None, label: int | None = None) -> Example:
    return Example(text=alpaca_prompt(q), response=a, answer=a, choices=choices, label=label, meta={"answer_type": "exact"})


def test_response_only_mask_and_eos(tiny_llama) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 128)
    e = ex("What is 2 plus 2?", "4 apples")
    batch = obj.collate([e, ex("Say hi to the person in the room please.", "hi")])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = obj.prompt_ids(e)
    response = tiny_llama.tokenizer("4 apples", add_special_tokens=False).input_ids + [obj.eos_id]
    assert ids[-len(response):] == response  # left padding: the response ends the row
    assert ids[-len(response) - len(prompt):-len(response)] == prompt
    trained = [t for t in labels if t != IGNORE]
    assert trained == response  # loss on the response and EOS only
    assert all(t == IGNORE for t in labels[: len(labels) - len(response)])


def test_left_padding_and_positions(tiny_llama) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 128)
    batch = obj.collate([ex("short", "a"), ex("a much longer question with many more words in it", "b")])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    pos = obj.positions(mask)
    assert pos[0, mask[0].argmax()] == 0 and pos[1, 0] == 0


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_padding_does_not_change_the_loss(which: str, request) -> None:
    """Left padding with explicit position ids: a row's loss is the same alone or next to a longer row
    (GPT-2 has absolute positions, so this also checks the position ids)."""
    lm = request.getfixturevalue(which)
    obj = CausalLMObjective(lm.tokenizer, 128)
    a, b = ex("short", "yes"), ex("a much longer question with many more words in it", "no thanks")
    lm.model.eval()
    with torch.no_grad():
        alone = obj.loss(lm.model, obj.collate([a]))
        logp, valid = obj.token_logprobs(lm.model, obj.collate([a, b]))
        together = -logp[0].sum() / valid[0].sum()
    assert together.item() == pytest.approx(alone.item(), rel=1e-4, abs=1e-5)


def test_truncation_keeps_the_response(tiny_llama) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 16)
    e = ex("word " * 50, "the answer")
    ids, labels = obj.encode(e)
    assert len(ids) == 16
    assert [t for t in labels if t != IGNORE] == obj.response_ids("the answer")
    assert ids[: 16 - len(obj.response_ids("the answer"))] == obj.prompt_ids(e)[-(16 - len(obj.response_ids("the answer"))):]


def test_train_and_eval_prompts_are_byte_identical(tiny_llama) -> None:
    """The tokens before the response are the same in training batches, likelihood scoring and generation."""
    obj = CausalLMObjective(tiny_llama.tokenizer, 128)
    e = ex("What is 12 plus 30?", "42", choices=["42", "41"], label=0)
    seen: dict[str, Any] = {}

    class Spy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            seen.setdefault("score", kw["input_ids"][0].tolist())
            return self.inner(**kw)

        def generate(self, **kw):
            seen["generate"] = kw["input_ids"][0].tolist()
            return self.inner.generate(**kw)

    spy = Spy(tiny_llama.model)
    obj.score_choices(spy, [e])
    obj.generate(spy, [e], max_new_tokens=2)
    ids, labels = obj.encode(e)
    train_prompt = [t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE]
    assert seen["score"] == train_prompt == seen["generate"]
    assert train_prompt == tiny_llama.tokenizer(obj.prompt_text(e), add_special_tokens=False).input_ids
    assert obj.prompt_text(e).encode() == alpaca_prompt("What is 12 plus 30?").encode()  # no chat template here
    # the template has no stray indentation (the reference code's training prompt did)
    assert all(not line.startswith((" ", "\t")) for line in alpaca_prompt("q", "ctx").splitlines())


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_cached_scoring_equals_full_sequences(which: str, request) -> None:
    lm = request.getfixturevalue(which)
    obj = CausalLMObjective(lm.tokenizer, 128)
    examples = [ex("What is 1 plus 1?", "2", ["2", "11", "two apples"], 0), ex("Pick one", "b", ["a", "b c d"], 1)]
    lm.model.eval()
    scores = obj.score_choices(lm.model, examples)
    for e, s in zip(examples, scores, strict=True):
        for c, got in zip(e.choices, s, strict=True):
            logp, _ = obj.token_logprobs(lm.model, obj.collate([Example(text=e.text, response=c)]))
            assert got == pytest.approx(logp.sum().item(), rel=1e-4, abs=1e-4)


class Cache:
    def reorder_cache(self, idx: torch.Tensor) -> None:
        self.idx = idx


class PreferringModel(nn.Module):
    """Logits constructed to prefer a fixed set of tokens at every position, whatever the context."""

    def __init__(self, vocab: int, preferred: list[int]) -> None:
        super().__init__()
        self.vocab = vocab
        self.bias = torch.zeros(vocab)
        self.bias[preferred] = 8.0

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kw):
        b, t = input_ids.shape
        keep = logits_to_keep or t
        return SimpleNamespace(logits=self.bias.expand(b, keep, self.vocab).clone(), past_key_values=Cache())


def test_likelihood_scoring_picks_the_preferred_answer(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    obj = CausalLMObjective(tok, 128, eval_mode="likelihood")
    gold = "paris france"
    model = PreferringModel(tok.vocab_size, obj.response_ids(gold))
    choices = ["london", gold, "rome italy", "berlin"]
    examples = [ex("Capital of France?", gold, choices, 1), ex("Capital of France, again?", gold, choices[::-1], 2)]
    scores = obj.score_choices(model, examples)
    assert [max(range(4), key=s.__getitem__) for s in scores] == [1, 2]
    metrics = obj.evaluate(model, examples, batch_size=2)
    assert metrics["accuracy"] == 1.0
    wrong = [ex("Capital of France?", gold, choices, 0)]  # gold label says "london": must score 0
    assert obj.evaluate(model, wrong, batch_size=1)["accuracy"] == 0.0


def test_generation_metrics_use_answer_extraction(tiny_llama, monkeypatch) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 128, eval_mode="generate")
    examples = [Example(text=alpaca_prompt("q1"), response="The answer is 12", answer="12", meta={"answer_type": "number"}),
                Example(text=alpaca_prompt("q2"), response="the correct answer is true", answer="true",
                        meta={"answer_type": "boolean"})]
    monkeypatch.setattr(obj, "generate", lambda model, chunk: ["so 3 * 4 = 12. The answer is 12", "the correct answer is false"])
    m = obj.evaluate(tiny_llama.model, examples, batch_size=2)
    assert m["accuracy"] == 0.5 and m["loss"] > 0


def test_generate_is_batched_greedy_and_cut(tiny_llama) -> None:
    obj = CausalLMObjective(tiny_llama.tokenizer, 128)
    examples = [ex("a", "b"), ex("a longer prompt than the first one", "c")]
    batched = obj.generate(tiny_llama.model, examples, max_new_tokens=4)
    single = [obj.generate(tiny_llama.model, [e], max_new_tokens=4)[0] for e in examples]
    assert batched == single  # left padding does not change greedy outputs
    assert CausalLMObjective.cut("42\n\n### Instruction: more") == "42\n\n"
