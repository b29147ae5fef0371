"""pydantic's ValidationError -> fedsb's one-line config message naming the key, the problem and the fix."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

_RANGE = ("greater_than", "greater_than_equal", "less_than_equal", "finite_number")
_TYPES = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "list_type": "a list"}


def did_you_mean(key: Any, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(str(key), options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(tp: Any) -> bool:
    return tp is float or any(_is_number(a) for a in typing.get_args(tp))  # through Optional and Annotated


def _out_of_range(key: str, value: Any, field: FieldInfo) -> str:
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le") if hasattr(m, name)}
    if _is_number(field.annotation):  # an int given for a number reads 1.0
        value = float(value)
    lo = f">= {bounds['ge']:g}" if "ge" in bounds else f"> {bounds['gt']:g}"  # every bounded key has a lower bound
    hi = f" and <= {bounds['le']:g}" if "le" in bounds else ""
    return f"{key} = {value!r} is out of range; it must be {lo}{hi}"


def _message(err: ErrorDetails, root: type[BaseModel]) -> str:
    kind, value, loc = err["type"], err.get("input"), err["loc"]
    model, names = root, [getattr(root, "section", "")]
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:  # an unknown key, or a non-string one
            dotted = ".".join([*names, str(part)]).lstrip(".")
            # A key with control characters (a newline...) is escaped, so the message stays one line.
            shown = (f"'{dotted}'" if dotted.isprintable() else repr(dotted)) if any(names) else repr(part)
            return f"unknown config key {shown}{did_you_mean(part, list(model.model_fields))}; see README 'Configuration'"
        names.append(part)
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break  # a key; what follows in loc is a list index
        model = field.annotation
    else:  # loc names a whole table
        return f"[{names[-1]}] must be a table, got {type(value).__name__}" if any(names) else "config must be a table of keys"
    key = ".".join(n for n in names if n)
    if kind == "int_too_large":
        return f"{key} = {value} is too large; use a 64-bit integer"
    if kind == "float_too_large":
        return f"{key} = {value} is too large for a number"
    if kind == "bool_type":
        return f"{key} must be true or false, got {value!r}"
    if kind == "literal_error" and isinstance(value, str):
        choices = [str(c) for c in typing.get_args(field.annotation)]
        return f"{key} = {value!r} is not valid{did_you_mean(value, choices)}; choose one of: {', '.join(choices)}"
    if kind in _RANGE:
        return _out_of_range(key, value, field)
    if kind in _TYPES or kind == "literal_error":  # a choice is a string
        return f"{key} must be {_TYPES.get(kind, 'a string')}, got {type(value).__name__} {value!r}"
    return f"{key}: {err['msg'][:1].lower()}{err['msg'][1:]}"


def _order(err: ErrorDetails, data: Any) -> tuple[int, list[int]]:
    """Unknown keys and wrong types first, in the order of the input (its first bad key); then choices; then ranges."""
    kind = err["type"]
    rank = 1 if kind == "literal_error" and isinstance(err.get("input"), str) else 2 if kind in _RANGE else 0
    where = []
    for part in err["loc"]:
        if not isinstance(data, dict) or part not in data:
            break
        where.append(list(data).index(part))
        data = data[part]
    return rank, where


def one_line(exc: ValidationError, root: type[BaseModel], data: Any = None) -> str:
    """The message of the first error in ``exc``, raised validating ``data`` as ``root``, on one line."""
    return _message(min(exc.errors(include_url=False), key=lambda e: _order(e, data)), root)
