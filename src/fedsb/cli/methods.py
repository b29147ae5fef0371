"""``fedsb methods``: the five methods, one line each."""

from __future__ import annotations

from fedsb.methods import METHODS


def methods() -> None:
    for name, cls in METHODS.items():
        exact = "exact" if cls.exact else "inexact"
        print(f"{name:<11} {exact:<8} {cls.summary}")
