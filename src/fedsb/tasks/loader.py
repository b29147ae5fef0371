"""Task loading: builtin tasks, local files/directories or Hugging Face datasets.

:func:`load_task` is the entry point. A BIG-bench multiple-choice file for a classifier is read directly;
everything else (causal LMs, other formats) goes through :func:`load`.

``task.path`` may be a file (JSON list or JSONL; BIG-bench ``task.json``) or a directory holding
``train.json[l]`` and/or ``test.json[l]`` (or ``validation``/``dev``). Without ``task.path``, ``task.name``
is a builtin, a short hub alias (gsm8k, metamathqa, snli, mnli, commonsense170k) or any hub dataset id
(needs the network, or a copy in the local ``datasets`` cache). ``task.format = auto`` recognises the
format from the fields of the first record.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError
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
    if cfg.path is None:
        hub_id, config, _, test_split = HUB_ALIASES.get(cfg.name, (cfg.name, None, cfg.format, "test"))
        splits = hub_records(hub_id, config)
        test = splits.get(test_split) or next((splits[s] for s in ("test", "validation", "validation_matched") if s in splits), [])
        return Splits(cfg.name, splits.get("train", []), test)
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise FedsbError(f"data path {str(p)!r} not found; check task.path")
    if p.is_dir():
        if (p / "task.json").is_file():
            return Splits(p.name, [], [], bigbench=p / "task.json")
        files = split_files(p)
        if not files:
            raise FedsbError(f"{p} holds no train.json[l] or test.json[l] (nor task.json); point task.path at a data file")
        return Splits(p.name, read_records(files["train"]) if "train" in files else [],
                      read_records(files["test"]) if "test" in files else [])
    if p.suffix == ".json" and cfg.format in ("auto", "bigbench") and _is_bigbench(p):
        return Splits(p.parent.name if p.stem == "task" else p.stem, [], [], bigbench=p)
    return Splits(p.stem if p.stem not in ("train", "test") else p.parent.name, read_records(p), [])


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
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    return TaskData(name=splits.name, kind=kind, train=train, test=test, labels=labels)


def load_eval_examples(cfg: TaskConfig, kind: TaskKind = "causal-lm", seed: int = 0) -> tuple[str, list[Example]]:
    """The evaluation examples of a task: its test split, or the whole file when it has no split."""
    splits = gather(cfg)
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
    if cfg.max_test_examples:
        test = test[: cfg.max_test_examples]
    return TaskData(name=cfg.label, kind="classification", train=train, test=test, labels=labels)
