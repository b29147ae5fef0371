"""Generic instruction data: any JSON/JSONL with a prompt field and a response field named in the config."""

from __future__ import annotations

from typing import Any

from fedsb.tasks.base import Example
from fedsb.tasks.fields import field
from fedsb.tasks.prompts import alpaca_prompt


def convert(record: dict[str, Any], where: str, prompt_field: str, response_field: str) -> Example:
    prompt = field(record, prompt_field, where, f"jsonl (task.prompt_field = {prompt_field!r})")
    response = field(record, response_field, where, f"jsonl (task.response_field = {response_field!r})")
    return Example(text=alpaca_prompt(prompt), response=response, answer=response.strip(),
                   meta={"answer_type": "exact", "where": where})
