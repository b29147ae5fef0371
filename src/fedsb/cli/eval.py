"""``fedsb eval RUN_DIR|ADAPTER_DIR --task T [--task T ...]``: per-task accuracy and the mean, to JSON.

``RUN_DIR`` is a directory written by ``fedsb run`` (its model is rebuilt from ``config.toml`` and its final
adapter loaded); ``ADAPTER_DIR`` is a PEFT LoRA adapter (``adapter_model.safetensors`` +
``adapter_config.json``) whose base model is a local directory, a cached hub id or a builtin alias.
A task is a data file, a directory with ``test.json[l]``, a directory of such directories (e.g. the 8
commonsense test sets: one task each), a builtin name or a hub dataset.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from fedsb.config import TaskConfig
from fedsb.errors import FedsbError, UsageError
from fedsb.io.rundir import write_json
from fedsb.tasks.base import Example
from fedsb.tasks.records import split_files


@dataclass
class Evaluable:
    model: torch.nn.Module
    tokenizer: Any
    kind: str
    chat_template: str
    max_length: int
    source: str
    default_out: Path


def load_target(target: str, device: str = "cpu") -> Evaluable:
    """A run directory (or its ``adapter/``) or a PEFT adapter directory, ready to evaluate."""
    p = Path(target)
    if not p.is_dir():
        raise UsageError(f"{target!r} is not a directory; pass a run directory (fedsb run --out) or a PEFT adapter directory")
    run_dir = p if (p / "config.toml").is_file() else p.parent if (p.parent / "config.toml").is_file() and (p / "adapter_config.json").is_file() else None
    if run_dir is not None:
        from fedsb.cli.export import load_run

        fed = load_run(run_dir)
        return Evaluable(fed.adapted.model, fed.loaded.tokenizer, fed.loaded.kind, fed.cfg.task.chat_template,
                         fed.cfg.task.max_length, str(run_dir), run_dir / "eval.json")
    if (p / "adapter_config.json").is_file():
        return load_peft(p, device)
    raise UsageError(f"{target!r} has neither config.toml (a run) nor adapter_config.json (a PEFT adapter)")


def load_peft(p: Path, device: str) -> Evaluable:
    from peft import PeftModel

    from fedsb.models.load import load_model, resolve_device

    try:
        conf = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        base = conf["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        raise FedsbError(f"{p}/adapter_config.json is not a PEFT adapter config (needs base_model_name_or_path)") from None
    if conf.get("task_type") not in (None, "CAUSAL_LM"):
        raise FedsbError(f"{p} is a {conf.get('task_type')} adapter; evaluate classifier runs through their run directory")
    loaded = load_model(base, "causal-lm")
    from fedsb.io.peft_checks import check_peft_adapter

    check_peft_adapter(p, loaded.model)  # incomplete or mismatched adapters: one line, not PEFT's traceback
    try:
        model = PeftModel.from_pretrained(loaded.model, str(p)).merge_and_unload()
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        raise FedsbError(f"PEFT cannot load the adapter in {p} ({str(e).strip().splitlines()[0][:160]}); re-export it") from None
    model.to(resolve_device(device))
    return Evaluable(model, loaded.tokenizer, "causal-lm", "auto", 512, str(p), p / "eval.json")


def expand_tasks(specs: list[str]) -> list[str]:
    """A directory of task directories becomes one task per sub-directory (sorted by name)."""
    out: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() and not split_files(p) and not (p / "task.json").is_file():
            subs = sorted(d for d in p.iterdir() if d.is_dir() and (split_files(d) or (d / "task.json").is_file()))
            if not subs:
                raise FedsbError(f"{p} holds no task data (test.json[l], train.json[l] or task.json, directly or one level down)")
            out += [str(d) for d in subs]
        else:
            out.append(spec)
    return out


def task_examples(spec: str, fmt: str, kind: str, max_examples: int | None, seed: int) -> tuple[str, list[Example]]:
    from fedsb.tasks import BUILTIN_TASKS
    from fedsb.tasks.loader import load_eval_examples

    is_path = Path(spec).exists() or spec.endswith((".json", ".jsonl")) or spec.startswith((".", "/", "~"))
    # --format goes in as typed: TaskConfig checks it against its choices (a UsageError naming them).
    cfg = TaskConfig(name=spec if not is_path else Path(spec).stem, path=spec if is_path else None, format=cast(Any, fmt))
    if kind == "classification":
        from fedsb.tasks import load_task

        data = load_task(cfg, "classification", seed)
        name, examples = data.name, data.test
    elif not is_path and spec in BUILTIN_TASKS:
        from fedsb.tasks import load_task

        data = load_task(cfg, "causal-lm", seed)  # held-out split: the part a run on this task never trains on
        name, examples = data.name, data.test
    else:
        name, examples = load_eval_examples(cfg, "causal-lm", seed)
    if not examples:
        raise FedsbError(f"task {spec!r} has no evaluation examples")
    if max_examples and len(examples) > max_examples:
        keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
        examples = [examples[i] for i in keep]
    return name, examples


def evaluate(
    target: str,
    tasks: list[str],
    max_examples: int | None = None,
    mode: str = "auto",
    batch_size: int = 16,
    max_length: int | None = None,
    out: str | None = None,
    fmt: str = "auto",
    threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    if not tasks:
        raise UsageError("pass at least one --task (a data file, a directory, or a task name)")
    if mode not in ("auto", "likelihood", "generate"):
        raise UsageError(f"--mode {mode!r} is not valid; choose auto, likelihood or generate")
    if threads:
        torch.set_num_threads(threads)
    ev = load_target(target, device)
    specs = expand_tasks(tasks)
    device_t = next(ev.model.parameters()).device
    if ev.kind == "classification":
        from fedsb.objectives.classification import ClassificationObjective

        objective: Any = ClassificationObjective(ev.tokenizer, max_length or ev.max_length, device_t)
    else:
        from fedsb.objectives.causal_lm import CausalLMObjective

        # Evaluation prompts (commonsense: ~150-250 tokens) must not be cut to a short training length.
        objective = CausalLMObjective(ev.tokenizer, max_length or max(ev.max_length, 512), device_t, mode, None, ev.chat_template)
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(specs, desc="tasks", unit="task", disable=not progress or len(specs) < 2)
    for spec in bar:
        name, examples = task_examples(spec, fmt, ev.kind, max_examples, seed)
        bar.set_postfix(task=name)
        t0 = time.perf_counter()
        if ev.kind == "classification":
            metrics = objective.evaluate(ev.model, examples, batch_size, progress=progress)
            used = "classification"
        else:
            used = objective.mode_for(examples)
            metrics = objective.evaluate(ev.model, examples, batch_size, progress=progress, desc=name)
        results[name] = {**metrics, "examples": len(examples), "mode": used, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{name:<24} accuracy {metrics['accuracy']:.4f}  ({len(examples)} examples, {used}, {results[name]['seconds']:.1f} s)")
    mean = sum(r["accuracy"] for r in results.values()) / len(results)
    report = {"target": ev.source, "tasks": results, "mean_accuracy": mean, "max_examples": max_examples,
              "threads": torch.get_num_threads()}
    path = Path(out) if out else ev.default_out
    write_json(path, report)
    print(f"mean accuracy over {len(results)} task(s): {mean:.4f}; written to {path}")
    return report
