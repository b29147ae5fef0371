"""The federated methods behind one interface (``fedsb.methods.base.Method``), and their registry.

A method is one module: a :class:`~fedsb.methods.base.Method` subclass that states what clients train, the
payloads, the aggregation, its communication formula, its default learning rate, whether it is additive, and
its plot style. :func:`register_method` adds it to :data:`METHODS`; every entry point (``fedsb run``,
``compare``, the Flower apps) then accepts its name. A method defined outside fedsb is found again in the
processes fedsb spawns (``fedsb compare`` workers) by importing the module that registered it.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from fedsb.config import RunConfig, did_you_mean
from fedsb.errors import UsageError
from fedsb.methods.base import ClientUpdate, Method, MethodOptions, ServerState
from fedsb.methods.fed_sb import FedSB
from fedsb.methods.fedex_lora import FedExLoRA
from fedsb.methods.fedit import FedIT
from fedsb.methods.fedsa_lora import FedSALoRA
from fedsb.methods.fedsvd import FedSVD
from fedsb.methods.ffa_lora import FFALoRA
from fedsb.methods.flora import FLoRA
from fedsb.methods.ravan import RAVAN
from fedsb.methods.rolora import RoLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (FedSB, FedIT, FFALoRA, FedExLoRA, FLoRA, FedSVD, RoLoRA, FedSALoRA, RAVAN)}
_BUILTIN = frozenset(METHODS)


def register_method(cls: type[Method]) -> type[Method]:
    """Add ``cls`` to the registry under ``cls.name`` (usable as a class decorator); a name is taken only once."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__module__}.{METHODS[name].__name__}")
    METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method registered from outside fedsb (the builtins stay)."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a builtin method and cannot be unregistered")
    METHODS.pop(name, None)


def plugin_modules() -> list[str]:
    """Modules that registered methods from outside fedsb (a spawned process imports them to see the same registry)."""
    return sorted({cls.__module__ for name, cls in METHODS.items() if name not in _BUILTIN})


def import_plugins(modules: list[str]) -> None:
    for m in modules:
        importlib.import_module(m)


def get_method(name: str) -> type[Method]:
    """The registered method ``name``; the entry points call it right after loading a config (before any model)."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}{did_you_mean(name, list(METHODS))}; "
                         f"choose one of: {', '.join(METHODS)}") from None


def method_options(name: str, raw: dict[str, Any] | None, cfg: RunConfig | None = None) -> MethodOptions:
    """``[method_options]`` checked against method ``name``'s options (and, given the run's ``cfg``, the method's
    :meth:`~fedsb.methods.base.Method.check_config`); a one-line error names the bad key."""
    cls = get_method(name)
    try:
        options = cls.parse_options(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "?"
        known = ", ".join(cls.Options.model_fields) or "none"
        raise UsageError(f"method_options.{key}: {err['msg']} (method {name!r} takes: {known}); fix or remove it") from None
    if cfg is not None:
        cls.check_config(cfg, options)
    return options


__all__ = ["METHODS", "ClientUpdate", "Method", "MethodOptions", "ServerState", "get_method", "import_plugins",
           "method_options", "plugin_modules",
           "register_method", "unregister_method"]
