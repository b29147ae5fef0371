"""The five federated methods behind one interface (``fedsb.methods.base.Method``)."""

from __future__ import annotations

from fedsb.config import did_you_mean
from fedsb.errors import UsageError
from fedsb.methods.base import ClientUpdate, Method, ServerState
from fedsb.methods.fed_sb import FedSB
from fedsb.methods.fedex_lora import FedExLoRA
from fedsb.methods.fedit import FedIT
from fedsb.methods.ffa_lora import FFALoRA
from fedsb.methods.flora import FLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (FedSB, FedIT, FFALoRA, FedExLoRA, FLoRA)}


def get_method(name: str) -> type[Method]:
    """The registered method ``name``; the entry points call it right after loading a config (before any model)."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}{did_you_mean(name, list(METHODS))}; "
                         f"choose one of: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "ClientUpdate", "Method", "ServerState", "get_method"]
