"""Commonsense reasoning in the LLM-Adapters format (``instruction``, ``input``, ``output``, ``answer``).

Commonsense170K trains; the 8 test sets (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA)
evaluate. The candidate label words come from the instruction's ``Answer format: a/b/c`` line (or the
gold label's family), so every example can be scored by likelihood as well as by generation.
"""

from __future__ import annotations

import re
from typing import Any

from fedsb.errors import FedsbError
from fedsb.tasks.answers import LABEL_FAMILIES, label_family
from fedsb.tasks.base import Example
from fedsb.tasks.fields import field
from fedsb.tasks.prompts import alpaca_prompt

ANSWER_FORMAT_RE = re.compile(r"Answer format:\s*([A-Za-z0-9_]+(?:\s*/\s*[A-Za-z0-9_]+)+)")


def candidate_labels(instruction: str, gold: str) -> list[str] | None:
    m = ANSWER_FORMAT_RE.search(instruction)
    if m:
        return [w.strip().lower() for w in m.group(1).split("/")]
    fam = label_family(gold)
    return list(LABEL_FAMILIES[fam]) if fam != "exact" else None


def convert(record: dict[str, Any], where: str) -> Example:
    instruction = field(record, "instruction", where, "commonsense")
    output = field(record, "output", where, "commonsense")
    gold = str(record.get("answer") or "").strip().lower()
    if not gold:
        raise FedsbError(f"{where}: missing field 'answer' (the gold label word, e.g. 'true' or 'answer2') for format 'commonsense'")
    family = label_family(gold)
    labels = candidate_labels(instruction, gold)
    choices = label = None
    if labels and gold in labels:
        # Candidates are whole responses ("the correct answer is answer2"), scored exactly like the trained output.
        lower = output.lower()
        if gold in lower:
            i = lower.rindex(gold)
            choices = [output[:i] + w + output[i + len(gold):] for w in labels]
        else:
            choices = labels
        label = labels.index(gold)
    return Example(
        text=alpaca_prompt(instruction, str(record.get("input") or "")),
        label=label,
        response=output,
        choices=choices,
        answer=gold,
        meta={"answer_type": family, "where": where},
    )
