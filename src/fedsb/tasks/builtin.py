"""Tasks shipped inside the package (BIG-bench files with their license notice)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUILTIN_TASKS = {
    "intent_recognition": "data/bigbench/intent_recognition/task.json",
    "2_digit_addition": "data/bigbench/arithmetic_2_digit_addition/task.json",  # the LLM preset's task
}


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("fedsb").joinpath(BUILTIN_TASKS[name])))
