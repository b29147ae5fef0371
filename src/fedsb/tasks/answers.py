"""Answer extraction from generated text, following the paper's evaluation conventions.

- commonsense (LLM-Adapters): the *first* label word of the example's family in the generation
  (true/false, solution1/2, answer1-5, ending1-4, option1/2);
- GSM8K / MetaMathQA: the number after the last "The answer is" (or the last ``#### n``), else the last
  number in the text; commas, signs, decimals and fractions are understood; compared numerically;
- NLI: the first of entailment / neutral / contradiction;
- anything else: the first line of the generation compared with the target after normalising
  whitespace and case.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

LABEL_FAMILIES: dict[str, list[str]] = {
    "boolean": ["true", "false"],
    "solution": ["solution1", "solution2"],
    "answer": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "ending": ["ending1", "ending2", "ending3", "ending4"],
    "option": ["option1", "option2"],
    "nli": ["entailment", "neutral", "contradiction"],
}

_NUMBER = r"[-+−]?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
NUMBER_RE = re.compile(_NUMBER)
ANSWER_IS_RE = re.compile(r"the answer is\s*:?\s*", re.IGNORECASE)


def label_family(label: str) -> str:
    """The family of a gold label word (``answer3`` -> ``answer``, ``true`` -> ``boolean``)."""
    word = label.strip().lower()
    for fam, words in LABEL_FAMILIES.items():
        if word in words:
            return fam
    stem = word.rstrip("0123456789")
    if stem in LABEL_FAMILIES:
        return stem
    return "exact"


def extract_label(text: str, family: str) -> str | None:
    """The first label word of ``family`` in ``text`` (case-insensitive), or None."""
    words = LABEL_FAMILIES[family]
    # Longest first so "answer1" cannot shadow a hypothetical "answer10"; word boundary on the left only,
    # as LLM-Adapters' regex matches "answer1." and "answer1:" alike.
    pattern = re.compile(r"(?<![a-z])(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + ")", re.IGNORECASE)
    m = pattern.search(text)
    return m.group(1).lower() if m else None


def parse_number(s: str) -> float | None:
    """``"1,234"`` -> 1234.0, ``"-3/4"`` -> -0.75, ``"$5.50"`` -> 5.5; None when unparsable."""
    s = s.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").strip()
    s = s.rstrip(".")
    if not s:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            f = Fraction(num) / Fraction(den)
            return float(f)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> float | None:
    """The final numeric answer of a math solution (see module docstring), or None."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = NUMBER_RE.search(tail)
        if m:
            return parse_number(m.group(0))
    matches = list(ANSWER_IS_RE.finditer(text))
    if matches:
        m = NUMBER_RE.search(text[matches[-1].end():])
        if m:
            return parse_number(m.group(0))
    nums = NUMBER_RE.findall(text)
    return parse_number(nums[-1]) if nums else None


def numbers_equal(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def is_correct(generation: str, gold: str, answer_type: str) -> bool:
    """Whether ``generation`` answers ``gold``. ``answer_type``: a label family, ``number`` or ``exact``."""
    if answer_type in LABEL_FAMILIES:
        return extract_label(generation, answer_type) == gold.strip().lower()
    if answer_type == "number":
        return numbers_equal(extract_number(generation), parse_number(gold))
    first = generation.strip().split("\n", 1)[0] if generation.strip() else ""
    return normalise(first) == normalise(gold)
