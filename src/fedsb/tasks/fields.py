"""Small helpers shared by the record converters: required fields with a located error."""

from __future__ import annotations

from typing import Any

from fedsb.errors import FedsbError


def field(record: dict[str, Any], key: str, where: str, fmt: str) -> str:
    """``record[key]`` as a non-empty string, or a FedsbError naming the place and the expected fields."""
    if key not in record:
        raise FedsbError(f"{where}: missing field {key!r} for format {fmt!r} (fields: {', '.join(map(str, record)) or 'none'}); "
                         "fix the record or set task.format")
    value = record[key]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise FedsbError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return str(value)
