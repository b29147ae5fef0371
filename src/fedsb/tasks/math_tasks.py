"""Arithmetic reasoning: GSM8K (``question``, ``answer`` ending ``#### n``) and MetaMathQA (``query``, ``response``).

GSM8K solutions are rewritten to end with "The answer is n" (the phrase the paper's evaluation looks for)
and lose their ``<<48/2=24>>`` calculator annotations; MetaMathQA responses already end that way.
"""

from __future__ import annotations

import re
from typing import Any

from fedsb.errors import FedsbError
from fedsb.tasks.answers import ANSWER_IS_RE, extract_number
from fedsb.tasks.base import Example
from fedsb.tasks.fields import field
from fedsb.tasks.prompts import alpaca_prompt

CALC_RE = re.compile(r"<<[^<>]*>>")


def _clean_number(text: str) -> str:
    return text.strip().replace(",", "").rstrip(".")


def convert_gsm8k(record: dict[str, Any], where: str) -> Example:
    question = field(record, "question", where, "gsm8k")
    solution = field(record, "answer", where, "gsm8k")
    if "####" not in solution:
        raise FedsbError(f"{where}: GSM8K field 'answer' must end with '#### <number>'")
    reasoning, final = solution.rsplit("####", 1)
    final = _clean_number(final)
    if extract_number(final) is None:
        raise FedsbError(f"{where}: GSM8K final answer {final!r} after '####' is not a number")
    reasoning = CALC_RE.sub("", reasoning).strip()
    response = f"{reasoning}\nThe answer is {final}" if reasoning else f"The answer is {final}"
    return Example(text=alpaca_prompt(question), response=response, answer=final, meta={"answer_type": "number", "where": where})


def convert_metamath(record: dict[str, Any], where: str) -> Example:
    query = field(record, "query", where, "metamath")
    response = field(record, "response", where, "metamath")
    matches = list(ANSWER_IS_RE.finditer(response))
    final = response[matches[-1].end():].strip() if matches else ""
    number = extract_number(final) if final else None
    answer_type = "number" if number is not None else "exact"
    return Example(text=alpaca_prompt(query), response=response, answer=_clean_number(final) or None,
                   meta={"answer_type": answer_type, "where": where})
