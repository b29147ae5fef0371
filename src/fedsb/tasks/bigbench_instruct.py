"""BIG-bench ``task.json`` cast as instructions for a causal LM.

Multiple-choice examples keep their candidates (likelihood scoring) and train on the gold one;
generative examples train on ``target``. The task's ``task_prefix`` is part of the instruction, and tasks
tagged "numerical response" (arithmetic) ask for the number only, so the answer is the whole response.
"""

from __future__ import annotations

from pathlib import Path

from fedsb.tasks.base import Example
from fedsb.tasks.bigbench import read_bigbench
from fedsb.tasks.prompts import alpaca_prompt

NUMBER_ONLY = "Answer with the number only."


def read_bigbench_instructions(path: str | Path) -> tuple[list[Example], list[str]]:
    examples, labels, data = read_bigbench(path)
    prefix = str(data.get("task_prefix") or "").strip()
    numeric = "numerical response" in (data.get("keywords") or [])
    out = []
    for i, e in enumerate(examples):
        instruction = f"{prefix}\n\n{e.text.strip()}" if prefix else e.text.strip()
        if numeric:
            instruction = f"{instruction} {NUMBER_ONLY}"
        gold = e.answer if e.answer is not None else e.response
        assert gold is not None  # read_bigbench sets one of them
        label = e.choices.index(gold) if e.choices else None
        out.append(Example(
            text=alpaca_prompt(instruction), label=label, response=gold, choices=e.choices, answer=gold,
            meta={"answer_type": "number" if numeric else "exact", "where": f"{path}[examples][{i}]"},
        ))
    return out, labels
