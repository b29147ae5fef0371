"""BIG-bench ``task.json`` loader (multiple choice via ``target_scores``; generative via ``target``)."""

from __future__ import annotations

import json
from pathlib import Path

from fedsb.errors import FedsbError
from fedsb.tasks.base import Example


def read_bigbench(path: str | Path) -> tuple[list[Example], list[str], dict]:
    """Examples and label names of a BIG-bench task file.

    Multiple-choice tasks become classification examples (``label`` indexes the sorted-by-first-appearance
    choice list); generative tasks keep ``response``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedsbError(f"data file {str(p)!r} not found; check task.path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FedsbError(f"data file {str(p)!r} is not valid JSON ({e}); pass a BIG-bench task.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list) or not data["examples"]:
        raise FedsbError(f"{str(p)!r} has no 'examples' list; a BIG-bench task.json needs one")
    labels: list[str] = []
    out: list[Example] = []
    for i, ex in enumerate(data["examples"]):
        if not isinstance(ex, dict) or "input" not in ex:
            raise FedsbError(f"{p}: example {i} has no 'input' field")
        if "target_scores" in ex:
            scores = ex["target_scores"]
            for c in scores:
                if c not in labels:
                    labels.append(c)
            gold = max(scores, key=lambda c: scores[c])
            out.append(Example(text=ex["input"], label=labels.index(gold), choices=list(scores), answer=gold))
        elif "target" in ex:
            t = ex["target"]
            t = t[0] if isinstance(t, list) else t
            out.append(Example(text=ex["input"], response=str(t), answer=str(t)))
        else:
            raise FedsbError(f"{p}: example {i} has neither 'target_scores' nor 'target'")
    return out, labels, data
