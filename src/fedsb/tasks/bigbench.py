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
    if p.is_dir():
        raise FedsbError(f"data path {str(p)!r} is a directory; pass the task.json file inside it as task.path")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FedsbError(f"data file {str(p)!r} not found; check task.path") from None
    except UnicodeDecodeError:
        raise FedsbError(f"data file {str(p)!r} is not UTF-8 text; pass a BIG-bench task.json") from None
    except OSError as e:
        raise FedsbError(f"cannot read data file {str(p)!r} ({e.strerror}); check task.path") from None
    if not text.strip():
        raise FedsbError(f"data file {str(p)!r} is empty; pass a BIG-bench task.json with an 'examples' list")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FedsbError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); pass a BIG-bench task.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list) or not data["examples"]:
        raise FedsbError(f"{str(p)!r} has no 'examples' list; a BIG-bench task.json needs one")
    labels: list[str] = []
    out: list[Example] = []
    for i, ex in enumerate(data["examples"]):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise FedsbError(f"{p}: example {i} has no 'input' text field")
        if "target_scores" in ex:
            scores = ex["target_scores"]
            if not isinstance(scores, dict) or not scores or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()
            ):
                raise FedsbError(f"{p}: example {i}: 'target_scores' must be a non-empty object mapping each choice to a number")
            for c in scores:
                if c not in labels:
                    labels.append(c)
            gold = max(scores, key=lambda c: scores[c])
            out.append(Example(text=ex["input"], label=labels.index(gold), choices=list(scores), answer=gold))
        elif "target" in ex:
            t = ex["target"]
            t = t[0] if isinstance(t, list) and t else t
            if not isinstance(t, (str, int, float)) or isinstance(t, bool):
                raise FedsbError(f"{p}: example {i}: 'target' must be a string (or a non-empty list of strings)")
            out.append(Example(text=ex["input"], response=str(t), answer=str(t)))
        else:
            raise FedsbError(f"{p}: example {i} has neither 'target_scores' nor 'target'")
    return out, labels, data
