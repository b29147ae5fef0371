"""fedsb's own error type: a one-line message naming the problem and the fix, and an exit code."""

from __future__ import annotations


class FedsbError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with ``exit_code`` (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(FedsbError):
    """Bad command line, config or override (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class Interrupted(FedsbError):
    """Ctrl-C during a run: the current round was abandoned and the run directory is resumable (exit 130)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=130)
