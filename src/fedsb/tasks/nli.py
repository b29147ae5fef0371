"""Natural language inference: SNLI / MNLI records (``premise``, ``hypothesis``, ``label``).

Also accepts the original SNLI JSONL fields (``sentence1``, ``sentence2``, ``gold_label``). Labels are
0 entailment, 1 neutral, 2 contradiction (the Hugging Face convention) or those words; examples without a
gold label (``-1`` or ``"-"``: annotators disagreed) are dropped, as is standard.
"""

from __future__ import annotations

from typing import Any

from fedsb.errors import FedsbError
from fedsb.tasks.answers import LABEL_FAMILIES
from fedsb.tasks.base import Example, TaskKind
from fedsb.tasks.fields import field
from fedsb.tasks.prompts import alpaca_prompt

NLI_LABELS = LABEL_FAMILIES["nli"]
INSTRUCTION = ("Does the premise entail the hypothesis, contradict it, or neither? "
               "Answer with one word: entailment, neutral or contradiction.")


def gold_index(raw: Any, where: str) -> int | None:
    """0/1/2 for a gold label; None for "no gold label" (-1, "-", empty)."""
    if isinstance(raw, bool):
        raise FedsbError(f"{where}: NLI label must be 0/1/2 or entailment/neutral/contradiction, got {raw!r}")
    if isinstance(raw, int):
        if raw == -1:
            return None
        if raw in (0, 1, 2):
            return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("", "-", "-1"):
            return None
        if word in NLI_LABELS:
            return NLI_LABELS.index(word)
        if word in ("0", "1", "2"):
            return int(word)
    raise FedsbError(f"{where}: NLI label must be 0/1/2 or entailment/neutral/contradiction (-1 or '-' = no gold label), got {raw!r}")


def convert(record: dict[str, Any], where: str, kind: TaskKind = "causal-lm") -> Example | None:
    pk, hk, lk = ("premise", "hypothesis", "label") if "premise" in record else ("sentence1", "sentence2", "gold_label")
    if lk not in record:
        raise FedsbError(f"{where}: missing field {lk!r} for format 'nli' (expects premise, hypothesis, label)")
    label = gold_index(record[lk], where)
    if label is None:
        return None
    premise, hypothesis = field(record, pk, where, "nli"), field(record, hk, where, "nli")
    meta = {"answer_type": "nli", "where": where, "premise": premise, "hypothesis": hypothesis}
    if kind == "classification":
        # One text for the classifier; "[SEP]" is BERT's separator token, which BERT tokenizers recognise.
        return Example(text=f"{premise} [SEP] {hypothesis}", label=label, meta=meta)
    return Example(
        text=alpaca_prompt(INSTRUCTION, f"Premise: {premise}\nHypothesis: {hypothesis}"),
        label=label, response=NLI_LABELS[label], choices=list(NLI_LABELS), answer=NLI_LABELS[label], meta=meta,
    )
