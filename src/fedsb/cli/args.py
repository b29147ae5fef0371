"""Command-line arguments argparse cannot split: a positional config path mixed with ``--key value`` overrides."""

from __future__ import annotations

from collections.abc import Collection

from fedsb.errors import UsageError

RUN_FLAGS = ("--overwrite", "--no-progress", "--debug")


def split_args(tokens: list[str], flags: Collection[str] = (), valued: Collection[str] = (),
               ) -> tuple[str | None, dict[str, str | bool], list[tuple[str, str]]]:
    """One command's arguments: an optional config path first, the command's own ``flags`` (``--name``) and
    ``valued`` options (``--name VALUE`` / ``--name=VALUE``), and every other ``--key value`` as a config override.

    Parsed by hand because argparse would take an override's value for the positional config path.
    """
    opts: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name = tok.split("=", 1)[0]
        if tok in flags:
            opts[tok[2:]] = True
        elif name in valued:
            if "=" in tok:
                opts[name[2:]] = tok.split("=", 1)[1]
            elif i + 1 >= len(tokens):
                raise UsageError(f"{name} needs a value")
            else:
                opts[name[2:]] = tokens[i + 1]
                i += 1
        else:
            rest.append(tok)
        i += 1
    config: str | None = None
    if rest and not rest[0].startswith("--"):
        config, rest = rest[0], rest[1:]
    return config, opts, parse_overrides(rest)


def split_run_args(tokens: list[str]) -> tuple[str | None, set[str], list[tuple[str, str]]]:
    """``fedsb run`` arguments: an optional config path, boolean flags, and ``--key value`` overrides."""
    config, opts, pairs = split_args(tokens, RUN_FLAGS)
    return config, {f"--{k}" for k in opts}, pairs


def pop_resume(tokens: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--resume RUN_DIR`` (or ``--resume=RUN_DIR``) out of ``fedsb run`` arguments."""
    rest: list[str] = []
    found: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--resume" or tok.startswith("--resume="):
            if tok == "--resume":
                if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                    raise UsageError("--resume needs the run directory to continue, e.g. --resume runs/fed-sb-r16-...")
                value, i = tokens[i + 1], i + 1
            else:
                value = tok.split("=", 1)[1]
            if found is not None:
                raise UsageError("--resume was given twice; pass one run directory")
            found = value
        else:
            rest.append(tok)
        i += 1
    return found, rest


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """``--key value`` / ``--key=value`` pairs."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise UsageError(f"unexpected argument {tok!r}; overrides look like --rank 8 or --dp.epsilon=1")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                raise UsageError(f"override --{key} needs a value, e.g. --{key} VALUE")
            value = extra[i + 1]
            i += 1
        pairs.append((key, value))
        i += 1
    return pairs
