"""A run warns when the task's texts are longer than task.max_length (the cut loses their end), not otherwise."""

from __future__ import annotations

import warnings

import pytest

from fedsb.core.federation import warn_truncation
from fedsb.objectives.base import Objective
from fedsb.tasks.base import Example


class Lengths(Objective):
    """An objective whose examples are as long as their text has words."""

    def token_lengths(self, examples: list[Example]) -> list[int]:
        return [len(e.text.split()) for e in examples]

    collate = loss = example_losses = evaluate = None  # type: ignore[assignment]


def examples(lengths: list[int]) -> list[Example]:
    return [Example(text=" ".join(["w"] * n), label=0) for n in lengths]


def test_warns_with_the_share_and_a_length_that_fits() -> None:
    with pytest.warns(UserWarning, match=r"50% of the training examples are longer than task.max_length = 10 .*about 30"):
        share = warn_truncation(Lengths(), examples([5, 8, 20, 30]), 10)
    assert share == 0.5


def test_silent_when_almost_everything_fits() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_truncation(Lengths(), examples([5] * 99 + [50]), 10) == pytest.approx(0.01)


def test_real_tokenisers_measure_untruncated_lengths() -> None:
    from fedsb.models.load import load_model
    from fedsb.objectives.causal_lm import CausalLMObjective
    from fedsb.objectives.classification import ClassificationObjective

    bert = load_model("tiny-bert", "classification", 2, "float32", 0)
    obj = ClassificationObjective(bert.tokenizer, max_length=8)
    short, long = Example(text="a cat"), Example(text=" ".join(["the cat sat on the mat"] * 10))
    n_short, n_long = obj.token_lengths([short, long])
    assert n_short < 8 < n_long  # measured before the cut to max_length
    assert obj.truncation([short, long], 8) == (0.5, n_long)
    llama = load_model("tiny-llama", "causal-lm", 2, "float32", 0)
    lm = CausalLMObjective(llama.tokenizer, max_length=8)
    ex = Example(text=long.text, response="yes")
    (n,) = lm.token_lengths([ex])
    assert n == len(lm.prompt_ids(ex)) + len(lm.response_ids("yes")) > 8


def test_large_pools_are_measured_on_a_fixed_sample() -> None:
    seen: list[int] = []

    class Counting(Lengths):
        def token_lengths(self, examples: list[Example]) -> list[int]:
            seen.append(len(examples))
            return super().token_lengths(examples)

    pool = examples([5] * 4000 + [50] * 1000)
    a = Counting().truncation(pool, 10, sample=500)
    assert seen == [500] and a == Counting().truncation(pool, 10, sample=500)  # same sample every time
    assert a is not None and 0.1 < a[0] < 0.3  # ~0.2 of the pool is cut


def test_only_fedsb_warnings_are_shortened() -> None:
    import warnings as w

    from fedsb import environment

    before = w.formatwarning
    try:
        environment.quiet_libraries()
        ours = w.formatwarning("cut", UserWarning, environment.FEDSB_DIR + "core/federation.py", 1)
        theirs = w.formatwarning("deprecated", UserWarning, "/site-packages/torch/nn/x.py", 7)
        assert ours == "warning: cut\n"
        assert "UserWarning" in theirs and "x.py:7" in theirs
    finally:
        w.formatwarning = before
