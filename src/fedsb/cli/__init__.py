"""The ``fedsb`` command line: ``main`` parses and dispatches; one module per command (``run``, ``compare``,
``eval``, ``export``, ``flower``, ``methods``); ``args`` splits overrides; errors print as one line."""

from fedsb.cli.main import main

__all__ = ["main"]
