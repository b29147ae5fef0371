"""Process settings every fedsb entry point applies: offline, no telemetry, quiet libraries.

The CLI, the Flower apps (simulation and the SuperLink/SuperNode processes ``fedsb flower deploy`` starts),
the benchmarks and the tests all take the settings from here, so a firewalled machine behaves the same
whichever way fedsb is started.
"""

from __future__ import annotations

import os

#: the package directory: warnings raised from here get fedsb's one-line format
FEDSB_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_env() -> None:
    """Set :data:`OFFLINE_ENV` in this process, keeping any value the user set explicitly."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def quiet_libraries() -> None:
    """Silence load reports and download bars of transformers/datasets; fedsb prints its own progress."""
    import logging
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("flwr_datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # fedsb's own warnings name the problem and the fix: one line, no source line. Other libraries' warnings keep
    # Python's format (category, file and line), which is what tracing them needs.
    if not getattr(warnings.formatwarning, "fedsb", False):
        default = warnings.formatwarning

        def formatwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          line: str | None = None) -> str:
            if FEDSB_DIR in str(filename):
                return f"warning: {message}\n"
            return default(message, category, filename, lineno, line)

        formatwarning.fedsb = True  # type: ignore[attr-defined]
        warnings.formatwarning = formatwarning
