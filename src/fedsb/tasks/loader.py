"""Task loading: builtin tasks, local files/directories or Hugging Face datasets.

:func:`load_task` is the entry point. A BIG-bench multiple-choice file for a classifier is read directly;
everything else (causal LMs, other formats) goes through :func:`load`.

``task.path`` may be a file (JSON list or JSONL; BIG-bench ``task.json``), a directory holding
``train.json[l]`` and/or ``test.json[l]`` (or ``validation``/``dev``), or a *suite*: a directory of such
directories (the LLM-Adapters commonsense folder: ARC-Challenge, boolq, ...). A suite is one task: its train
split is the union of the sub-folders' train splits, its test split the union of their test splits (a
sub-folder with one split contributes only that one; nothing is carved out of it), and every example carries
``meta["source"]`` = its sub-folder's name. A BIG-bench task with sub-tasks (a folder of sub-folders each holding a
``task.json``, such as arithmetic) is a suite too, for a causal LM: ``task.subtasks`` picks sub-tasks by name or
glob pattern, and each sub-task's split is carved with the fixed :data:`SUBSAMPLE_SEED`. Without ``task.path``, ``task.name`` is a builtin, a short hub
alias (gsm8k, metamathqa, snli, mnli, commonsense170k) or any hub dataset id (needs the network, or a copy in
the local ``datasets`` cache). ``task.format = auto`` recognises the format from the fields of the first
record (of each sub-folder, for a suite).

``task.max_train_per_source`` / ``task.max_test_per_source`` keep a fixed random subset of each source (a
task without sources is one source), drawn with :data:`SUBSAMPLE_SEED`, not the run seed: a benchmark's
methods and seeds all train and test on the same examples.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError, UsageError
from fedsb.tasks import commonsense, generic, math_tasks, nli
from fedsb.tasks.base import Example, TaskData, TaskKind
from fedsb.tasks.bigbench import read_bigbench
from fedsb.tasks.bigbench_instruct import read_bigbench_instructions
from fedsb.tasks.builtin import BUILTIN_TASKS, builtin_path
from fedsb.tasks.nli import NLI_LABELS
from fedsb.tasks.records import Record, hub_records, read_records, split_files
from fedsb.tasks.split import split_train_test

# alias -> (hub id, config, format, test split)
HUB_ALIASES: dict[str, tuple[str, str | None, str, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "gsm8k", "test"),
    "metamathqa": ("meta-math/MetaMathQA", None, "metamath", "test"),
    "snli": ("stanfordnlp/snli", None, "nli", "validation"),  # the paper reports SNLI dev accuracy
    "mnli": ("nyu-mll/glue", "mnli", "nli", "validation_matched"),
    "commonsense170k": ("zwhe99/commonsense_170k", None, "commonsense", "test"),
}
# Task names that only exist as local data: without task.path they are refused with this hint.
LOCAL_ONLY: dict[str, str] = {
    "llm-adapters-commonsense": "the LLM-Adapters commonsense folder: one sub-folder per data set (ARC-Challenge, boolq, "
                                "...) with train.json and/or test.json",
    "bigbench-arithmetic": "BIG-bench's arithmetic folder: one sub-folder per sub-task (2_digit_addition, ...), each with a "
                           "task.json",
}
# Seed of the per-source subsamples: fixed, so every run of a benchmark (any method, any seed) sees the same examples.
SUBSAMPLE_SEED = 0
FORMAT_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("commonsense", ("instruction", "output", "answer")),
    ("gsm8k", ("question", "answer")),
    ("metamath", ("query", "response")),
    ("nli", ("premise", "hypothesis", "label")),
    ("nli", ("sentence1", "sentence2", "gold_label")),
]


@dataclass
class Splits:
    name: str
    train: list[Record]
    test: list[Record]
    bigbench: Path | None = None
    parts: list[Splits] | None = None  # a suite: one Splits per sub-folder (its name is the source)


def detect_format(record: dict[str, Any], cfg: TaskConfig, where: str) -> str:
    for fmt, keys in FORMAT_FIELDS:
        if all(k in record for k in keys):
            return fmt
    if cfg.prompt_field in record and cfg.response_field in record:
        return "jsonl"
    raise FedsbError(
        f"{where}: cannot tell the data format from fields {sorted(record)}; set task.format "
        "(commonsense, gsm8k, metamath, nli, jsonl with task.prompt_field/task.response_field)"
    )


def converter(fmt: str, cfg: TaskConfig, kind: TaskKind) -> Callable[[dict[str, Any], str], Example | None]:
    if kind == "classification" and fmt != "nli":
        raise FedsbError(f"format {fmt!r} is instruction data for a causal LM; a classifier needs nli or a BIG-bench "
                         "multiple-choice task (or set model.kind = 'causal-lm')")
    if fmt == "commonsense":
        return commonsense.convert
    if fmt == "gsm8k":
        return math_tasks.convert_gsm8k
    if fmt == "metamath":
        return math_tasks.convert_metamath
    if fmt == "nli":
        return lambda r, w: nli.convert(r, w, kind)
    if fmt == "jsonl":
        return lambda r, w: generic.convert(r, w, cfg.prompt_field, cfg.response_field)
    raise FedsbError(f"task.format {fmt!r} is not a record format; choose commonsense, gsm8k, metamath, nli or jsonl")


def gather(cfg: TaskConfig) -> Splits:
    """Raw train/test records (either may be empty) from ``task.path``, a builtin, or the hub."""
    if cfg.path is None and cfg.name in BUILTIN_TASKS:
        return Splits(cfg.name, [], [], bigbench=builtin_path(cfg.name))
    if cfg.path is None and cfg.name in LOCAL_ONLY:
        raise UsageError(f"task {cfg.name!r} needs its data: pass --task.path /path/to/commonsense ({LOCAL_ONLY[cfg.name]})")
    if cfg.path is None:
        hub_id, config, _, test_split = HUB_ALIASES.get(cfg.name, (cfg.name, None, cfg.format, "test"))
        splits = hub_records(hub_id, config)
        test = splits.get(test_split) or next((splits[s] for s in ("test", "validation", "validation_matched") if s in splits), [])
        return Splits(cfg.name, splits.get("train", []), test)
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise FedsbError(f"data path {str(p)!r} not found; check task.path")
    if p.is_dir():
        if (p / "task.json").is_file() and _is_bigbench(p / "task.json"):
            if cfg.subtasks:
                raise UsageError(f"{p} is a BIG-bench task without sub-tasks; drop task.subtasks")
            return Splits(p.name, [], [], bigbench=p / "task.json")
        subtasks = bigbench_subtasks(p, cfg.subtasks)
        if subtasks:
            return Splits(p.name, [], [], parts=[Splits(d.name, [], [], bigbench=d / "task.json") for d in subtasks])
        files = split_files(p)
        if not files:
            subs = suite_folders(p)
            if subs:
                return Splits(p.name, [], [], parts=[_read_split_files(d.name, split_files(d)) for d in subs])
            raise FedsbError(f"{p} holds no train.json[l] or test.json[l] (nor task.json), directly or one level down; "
                             "point task.path at a data file or a folder of data folders")
        return _read_split_files(p.name, files)
    if cfg.subtasks:
        raise UsageError(f"task.subtasks selects sub-tasks of a BIG-bench folder, and {str(p)!r} is a file; point "
                         "task.path at the folder that holds the sub-task folders, or drop task.subtasks")
    if p.suffix == ".json" and cfg.format in ("auto", "bigbench") and _is_bigbench(p):
        return Splits(p.parent.name if p.stem == "task" else p.stem, [], [], bigbench=p)
    return Splits(p.stem if p.stem not in ("train", "test") else p.parent.name, read_records(p), [])


def bigbench_subtasks(p: Path, patterns: list[str]) -> list[Path]:
    """The sub-folders of ``p`` holding a BIG-bench ``task.json`` (BIG-bench's layout for a task with sub-tasks,
    e.g. arithmetic), sorted by name, kept when their name matches one of ``patterns`` (all when empty)."""
    found = sorted((d for d in p.iterdir() if d.is_dir() and (d / "task.json").is_file()), key=lambda d: d.name)
    if not patterns:
        return found
    if not found:
        raise UsageError(f"task.subtasks is set but {p} has no sub-folders with a task.json; drop task.subtasks")
    unmatched = [pat for pat in patterns if not any(fnmatch.fnmatchcase(d.name, pat) for d in found)]
    if unmatched:
        raise UsageError(f"task.subtasks {unmatched} match no sub-task of {p.name}; it has "
                         + ", ".join(d.name for d in found))
    return [d for d in found if any(fnmatch.fnmatchcase(d.name, pat) for pat in patterns)]


def suite_folders(p: Path) -> list[Path]:
    """The sub-folders of ``p`` that hold split files, sorted by name (a suite's sources, in a fixed order)."""
    return sorted((d for d in p.iterdir() if d.is_dir() and split_files(d)), key=lambda d: d.name)


def _read_split_files(name: str, files: dict[str, Path]) -> Splits:
    return Splits(name, read_records(files["train"]) if "train" in files else [],
                  read_records(files["test"]) if "test" in files else [])


def tag_source(examples: list[Example], source: str) -> list[Example]:
    for e in examples:
        e.meta["source"] = source
    return examples


def cap_per_source(examples: list[Example], cap: int | None, split: str) -> list[Example]:
    """At most ``cap`` examples of each ``meta["source"]`` (examples without one form one source): a seeded subset
    per source, drawn with :data:`SUBSAMPLE_SEED` and the source's name (never the run seed), kept in order."""
    if cap is None:
        return examples
    by_source: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_source.setdefault(e.meta.get("source", ""), []).append(i)
    keep: list[int] = []
    for source, idx in by_source.items():
        # a str seed is hashed with SHA-512 by random.Random: stable across processes (unlike hash())
        keep += idx if len(idx) <= cap else random.Random(f"{SUBSAMPLE_SEED}/{split}/{source}").sample(idx, cap)
    return [examples[i] for i in sorted(keep)]


def _is_bigbench(p: Path) -> bool:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("examples"), list)


def convert_records(records: list[Record], cfg: TaskConfig, kind: TaskKind) -> list[Example]:
    if not records:
        return []
    fmt = cfg.format if cfg.format not in ("auto", "bigbench") else detect_format(records[0][1], cfg, records[0][0])
    conv = converter(fmt, cfg, kind)
    out = []
    for where, rec in records:
        ex = conv(rec, where)
        if ex is not None:
            out.append(ex)
    return out


def load(cfg: TaskConfig, kind: TaskKind, seed: int) -> TaskData:
    """Train and test examples; a missing split is carved out of the other (``task.test_fraction``)."""
    splits = gather(cfg)
    if splits.parts is not None:
        return load_suite(splits, cfg, kind)
    if splits.bigbench is not None:
        if kind == "classification":
            raise FedsbError(f"{splits.bigbench}: BIG-bench files for a classifier are read by the core loader; set task.format = 'bigbench'")
        examples, labels = read_bigbench_instructions(splits.bigbench)
        train, test = split_train_test(examples, cfg.test_fraction, seed)
    else:
        labels = []
        train = convert_records(splits.train, cfg, kind)
        test = convert_records(splits.test, cfg, kind)
        if not train and not test:
            raise FedsbError(f"task {splits.name!r} has no usable examples; check task.path / task.name")
        if not train or not test:
            train, test = split_train_test(train or test, cfg.test_fraction, seed)
        if kind == "classification":
            labels = list(NLI_LABELS)
    train = cap_per_source(train, cfg.max_train_per_source, "train")
    test = cap_per_source(test, cfg.max_test_per_source, "test")
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    return TaskData(name=splits.name, kind=kind, train=train, test=test, labels=labels)


def load_suite(splits: Splits, cfg: TaskConfig, kind: TaskKind) -> TaskData:
    """A suite as one task: the union of its sub-folders' splits, each example tagged with its source.

    Sources are read in sorted-name order, capped per source, then the union is shuffled with the fixed
    :data:`SUBSAMPLE_SEED`: a prefix (``max_test_examples``, the public init slice) and iid's contiguous client
    shards then mix the sources, and the order does not depend on the run seed."""
    assert splits.parts is not None
    train: list[Example] = []
    test: list[Example] = []
    for part in splits.parts:
        if part.bigbench is not None:
            # a BIG-bench sub-task has no split of its own: carved with the fixed SUBSAMPLE_SEED, so that every
            # run seed tests on the same examples
            part_train, part_test = split_train_test(read_bigbench_instructions(part.bigbench)[0], cfg.test_fraction,
                                                     SUBSAMPLE_SEED)
        else:
            part_train, part_test = convert_records(part.train, cfg, kind), convert_records(part.test, cfg, kind)
        train += cap_per_source(tag_source(part_train, part.name), cfg.max_train_per_source, "train")
        test += cap_per_source(tag_source(part_test, part.name), cfg.max_test_per_source, "test")
    if not train and not test:
        raise FedsbError(f"task {splits.name!r} has no usable examples in its sub-folders; check task.path")
    rng = random.Random(SUBSAMPLE_SEED)
    rng.shuffle(train)
    rng.shuffle(test)
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    labels = list(NLI_LABELS) if kind == "classification" else []
    return TaskData(name=splits.name, kind=kind, train=train, test=test, labels=labels)


def load_eval_examples(cfg: TaskConfig, kind: TaskKind = "causal-lm", seed: int = 0) -> tuple[str, list[Example]]:
    """The evaluation examples of a task: its test split, or the whole file when it has no split."""
    splits = gather(cfg)
    if splits.parts is not None:
        return splits.name, [e for part in splits.parts
                             for e in tag_source(read_bigbench_instructions(part.bigbench)[0] if part.bigbench is not None
                                                 else convert_records(part.test or part.train, cfg, kind), part.name)]
    if splits.bigbench is not None:
        return splits.name, read_bigbench_instructions(splits.bigbench)[0]
    records = splits.test or splits.train
    return splits.name, convert_records(records, cfg, kind)


def load_task(cfg: TaskConfig, kind: TaskKind, seed: int = 0) -> TaskData:
    """Load the configured task for a classifier or a causal LM.

    ``task.evaluate_on = "validation"``: the run is scored on a stratified slice of the training pool
    (``task.validation_fraction``, capped by ``max_test_examples``) that no client trains on, and the test split
    is left untouched: what a learning-rate sweep must use (``fedsb compare --tune-lr``)."""
    data = _load_task(cfg, kind, seed)
    if cfg.evaluate_on == "test":
        return data
    train, val = split_train_test(data.train, cfg.validation_fraction, seed * 7_919 + 17)
    if cfg.max_test_examples:
        val = val[: cfg.max_test_examples]
    if not train or not val:
        raise FedsbError(f"task.validation_fraction = {cfg.validation_fraction} leaves {len(train)} training and {len(val)} "
                         "validation examples; choose a fraction that keeps both non-empty")
    return dataclasses.replace(data, name=f"{data.name} [validation]", train=train, test=val)


def _load_task(cfg: TaskConfig, kind: TaskKind, seed: int = 0) -> TaskData:
    if cfg.path is None and cfg.name in BUILTIN_TASKS:
        path = builtin_path(cfg.name)
    elif cfg.path is not None:
        path = Path(cfg.path)
        if not path.exists():
            raise FedsbError(f"data file {str(path)!r} not found; check task.path")
    else:
        return load(cfg, kind, seed)
    if kind == "causal-lm" or (cfg.format not in ("auto", "bigbench")):
        return load(cfg, kind, seed)
    examples, labels, _ = read_bigbench(path)
    if any(e.label is None for e in examples):
        raise FedsbError(f"{path} is a generative task; a classifier needs multiple choice (target_scores)")
    train, test = split_train_test(examples, cfg.test_fraction, seed)
    train = cap_per_source(train, cfg.max_train_per_source, "train")
    test = cap_per_source(test, cfg.max_test_per_source, "test")
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    return TaskData(name=cfg.label, kind="classification", train=train, test=test, labels=labels)
