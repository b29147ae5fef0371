"""Examples and task data shared by every task loader and objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["classification", "causal-lm"]


@dataclass
class Example:
    """One example. Classification: ``text`` + ``label``. Causal LM: ``text`` is the prompt, ``response`` the
    target; ``choices``/``label`` optionally allow likelihood scoring; ``answer`` is the gold answer string
    used by generation metrics."""

    text: str
    label: int | None = None
    response: str | None = None
    choices: list[str] | None = None
    answer: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskData:
    name: str
    kind: TaskKind
    train: list[Example]
    test: list[Example]
    labels: list[str] = field(default_factory=list)  # class names (classification) or label words
    metric: str = "accuracy"
