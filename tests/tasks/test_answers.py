"""Answer extraction on real-looking generations for every label family and for math answers."""

from __future__ import annotations

import pytest

from fedsb.tasks.answers import extract_label, extract_number, is_correct, label_family, parse_number

LABELS = [
    ("the correct answer is true", "boolean", "true"),
    ("The correct answer is False.", "boolean", "false"),
    ("false. Actually it is true", "boolean", "false"),  # the first label word counts
    ("the correct answer is solution2", "solution", "solution2"),
    ("Solution1 is right because", "solution", "solution1"),
    ("the correct answer is answer4\n\n### Instruction", "answer", "answer4"),
    ("answer5", "answer", "answer5"),
    ("I think ending3 fits best, not ending1", "ending", "ending3"),
    ("the correct answer is option1", "option", "option1"),
    ("Neutral. The premise does not say", "nli", "neutral"),
    ("contradiction", "nli", "contradiction"),
    ("I cannot answer that", "answer", None),
]


@pytest.mark.parametrize(("text", "family", "expected"), LABELS)
def test_extract_label(text: str, family: str, expected: str | None) -> None:
    assert extract_label(text, family) == expected


@pytest.mark.parametrize(("gold", "family"), [("true", "boolean"), ("answer3", "answer"), ("solution1", "solution"),
                                              ("ending4", "ending"), ("option2", "option"), ("entailment", "nli"),
                                              ("109", "exact")])
def test_label_family(gold: str, family: str) -> None:
    assert label_family(gold) == family


NUMBERS = [
    ("She pays 3 * 4 = 12 dollars.\nThe answer is 12", 12.0),
    ("The answer is 1,234.", 1234.0),
    ("The answer is: -7", -7.0),
    ("so the temperature drops to −3 degrees. The answer is −3", -3.0),
    ("The answer is 3/4", 0.75),
    ("The answer is $18.50.", 18.5),
    ("First the answer is 5, then we recheck. The answer is 6", 6.0),  # the last "The answer is"
    ("Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18", 18.0),
    ("#### 1,000,000", 1e6),
    ("no phrase here but 3 + 4 = 7", 7.0),  # fallback: the last number
    ("no number at all", None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBERS)
def test_extract_number(text: str, expected: float | None) -> None:
    got = extract_number(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_parse_number_and_is_correct() -> None:
    assert parse_number("1,234") == 1234.0
    assert parse_number("-2/8") == -0.25
    assert parse_number("1/0") is None
    assert is_correct("... The answer is 72", "72", "number")
    assert not is_correct("... The answer is 71", "72", "number")
    assert is_correct("the correct answer is answer2", "answer2", "answer")
    assert not is_correct("the correct answer is answer1", "answer2", "answer")
    assert is_correct(" 109\nmore text", "109", "exact")
    assert not is_correct("1090", "109", "exact")
