"""``fedsb methods``: every registered method, one line each, and its ``[method_options]`` with defaults."""

from __future__ import annotations

from fedsb.methods import METHODS


def methods() -> None:
    for name, cls in METHODS.items():
        kind = "personal" if cls.personalised else ("exact" if cls.exact else "inexact")
        print(f"{name:<11} {kind:<8} {cls.summary}")
        opts = cls.Options()
        for key in cls.Options.model_fields:
            print(f"{'':<20} method_options.{key} = {getattr(opts, key)!r}")
