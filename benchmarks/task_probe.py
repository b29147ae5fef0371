"""Is a task learnable from this encoder at a small budget? A linear probe on frozen features, before a comparison.

A method comparison ranks nothing on a task that no method can learn at the budget given: every method then
predicts the majority class (see docs/compare.md on epistemic_reasoning). This script asks the cheap question
first. It embeds each task's examples once with the frozen base model and fits a multinomial logistic
regression (L2, weight decay picked on a validation slice of the training part, never on the held-out part)
on three views of the last layer:

- ``pooler``: the pooler output, which is what fedsb's BERT classification head reads;
- ``cls``: the last hidden state of the first token;
- ``mean``: the attention-masked mean of the last hidden states (how all-MiniLM-L6-v2 was trained).

If no view beats the majority share by more than its standard error, the task needs the encoder itself to
change (hundreds of steps or more), and a short federated run will sit at the majority class whatever the
method. The held-out accuracy is averaged over ``--splits`` random 80/20 splits.

    python benchmarks/task_probe.py                      # the default task + the BIG-bench classification tasks
    python benchmarks/task_probe.py --tasks path/to/task.json --max-examples 2000 --max-length 96
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine_info, machine_line, md_table, quiet, write_results  # noqa: E402

BIGBENCH = REPO.parent / "shared" / "data" / "bigbench"
#: name -> (task.json, max_length): the lengths the compare and dp_scale runs use.
DEFAULT_TASKS: dict[str, tuple[Path, int]] = {
    "intent_recognition (embedded default)": (REPO / "src" / "fedsb" / "data" / "bigbench" / "intent_recognition" / "task.json", 64),
    "epistemic_reasoning": (BIGBENCH / "epistemic_reasoning" / "task.json", 64),
    "presuppositions_as_nli": (BIGBENCH / "presuppositions_as_nli" / "task.json", 128),
    "vitaminc_fact_verification": (BIGBENCH / "vitaminc_fact_verification" / "task.json", 128),
}
VIEWS = ("pooler", "cls", "mean")
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def embed(model_name: str, texts: list[str], max_length: int, batch: int = 64) -> dict[str, Any]:
    """The three frozen views of every text (float32 tensors, one row per text)."""
    import torch

    from fedsb.models.load import load_model

    loaded = load_model(model_name, "classification", num_labels=2)
    backbone = getattr(loaded.model, loaded.model.base_model_prefix)
    backbone.eval()
    out: dict[str, list[Any]] = {v: [] for v in VIEWS}
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = loaded.tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt")
            o = backbone(**enc)
            if getattr(o, "pooler_output", None) is None:
                sys.exit(f"error: model {model_name!r} has no pooler; task_probe probes BERT-style encoders (e.g. minilm)")
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out["mean"].append((o.last_hidden_state * mask).sum(1) / mask.sum(1))
            out["cls"].append(o.last_hidden_state[:, 0])
            out["pooler"].append(o.pooler_output)
    return {v: torch.cat(out[v]) for v in VIEWS}


def fit_logistic(x: Any, y: Any, n_classes: int, weight_decay: float, iters: int = 200) -> tuple[Any, Any]:
    """Multinomial logistic regression by L-BFGS on standardised features; returns (W, b)."""
    import torch

    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def standardise(train: Any, *others: Any) -> list[Any]:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(t - mu) / sd for t in (train, *others)]


def probe(x: Any, y: Any, n_classes: int, seed: int) -> dict[str, float]:
    """Held-out accuracy of the probe on one 80/20 split; weight decay picked on 20% of the training part."""
    import torch

    idx = list(range(len(y)))
    random.Random(seed).shuffle(idx)
    cut = int(0.8 * len(idx))
    tr, te = torch.tensor(idx[:cut]), torch.tensor(idx[cut:])
    inner = int(0.8 * len(tr))
    fit_i, val_i = tr[:inner], tr[inner:]
    xf, xv = standardise(x[fit_i], x[val_i])
    best = max(WEIGHT_DECAYS, key=lambda wd: _accuracy(*fit_logistic(xf, y[fit_i], n_classes, wd), xv, y[val_i]))
    xtr, xte = standardise(x[tr], x[te])
    acc = _accuracy(*fit_logistic(xtr, y[tr], n_classes, best), xte, y[te])
    majority = max(float((y[te] == k).float().mean()) for k in range(n_classes))
    return {"accuracy": acc, "majority": majority, "weight_decay": best, "n_test": len(te)}


def _accuracy(w: Any, b: Any, x: Any, y: Any) -> float:
    return float(((x @ w + b).argmax(1) == y).float().mean())


def probe_task(name: str, path: Path, max_length: int, max_examples: int, splits: int, model_name: str,
               seed: int = 0) -> dict[str, Any]:
    import torch

    from fedsb.tasks.bigbench import read_bigbench

    t0 = time.perf_counter()
    examples, labels, _ = read_bigbench(path)
    examples = [e for e in examples if e.label is not None]
    random.Random(seed).shuffle(examples)
    examples = examples[:max_examples]
    y = torch.tensor([e.label for e in examples])
    views = embed(model_name, [e.text for e in examples], max_length)
    row: dict[str, Any] = {"task": name, "examples": len(examples), "classes": len(labels), "max_length": max_length}
    for v in VIEWS:
        runs = [probe(views[v], y, len(labels), seed + s) for s in range(splits)]
        accs = [r["accuracy"] for r in runs]
        row[f"{v}_acc"] = statistics.mean(accs)
        row[f"{v}_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
    row["majority"] = statistics.mean(r["majority"] for r in runs)  # the same splits for every view
    row["n_test"] = runs[0]["n_test"]
    best = max(VIEWS, key=lambda v: row[f"{v}_acc"])
    se = (row["majority"] * (1 - row["majority"]) / row["n_test"]) ** 0.5  # binomial standard error at the majority share
    row["best_view"] = best
    row["margin"] = row[f"{best}_acc"] - row["majority"]
    row["signal"] = "yes" if row["margin"] > 2 * se else ("weak" if row["margin"] > se else "no")
    row["seconds"] = time.perf_counter() - t0
    return row


COLUMNS = [("task", "task", str), ("examples", "examples", str), ("classes", "classes", str),
           ("max_length", "max length", str), ("majority", "majority share", lambda v: f"{v:.3f}")] + [
    (f"{v}_acc", f"probe on {v}", lambda v: f"{v:.3f}") for v in VIEWS] + [
    ("margin", "best - majority", lambda v: f"{v:+.3f}"), ("signal", "signal", str), ("seconds", "s", lambda v: f"{v:.0f}")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=None, help="task.json paths (default: the embedded default and the "
                    "BIG-bench classification tasks beside the project)")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per example (default: per task, as the runs use)")
    ap.add_argument("--max-examples", type=int, default=3000)
    ap.add_argument("--splits", type=int, default=3, help="random 80/20 splits averaged")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="task_probe")
    args = ap.parse_args(argv)
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    if args.tasks:
        tasks = {Path(p).parent.name or p: (Path(p), args.max_length or 128) for p in args.tasks}
    else:
        tasks = {n: (p, args.max_length or ml) for n, (p, ml) in DEFAULT_TASKS.items() if p.is_file()}
    missing = [str(p) for p, _ in tasks.values() if not p.is_file()]
    if missing:
        sys.exit(f"error: task file {missing[0]} not found; pass an existing BIG-bench task.json to --tasks")
    meta = {"machine": machine_info(args.threads), "model": args.model, "splits": args.splits,
            "max_examples": args.max_examples, "weight_decays": list(WEIGHT_DECAYS)}
    rows = []
    for name, (path, ml) in tasks.items():
        rows.append(probe_task(name, path, ml, args.max_examples, args.splits, args.model))
        r = rows[-1]
        print(f"{name}: majority {r['majority']:.3f}; " + ", ".join(f"{v} {r[f'{v}_acc']:.3f}" for v in VIEWS)
              + f" -> signal {r['signal']} ({r['seconds']:.0f} s)", flush=True)
    md = (f"# Linear probes on frozen {args.model} features\n\n"
          f"Held-out accuracy of a logistic regression on frozen features (mean of {args.splits} random 80/20 splits of "
          f"at most {args.max_examples} examples per task; weight decay picked on a validation slice of the training part). "
          "`pooler` is what fedsb's BERT classification head reads; `cls` the first token's last hidden state; `mean` the "
          "masked mean of the last hidden states. `signal`: yes = the best view beats the majority share by more than two "
          "binomial standard errors, weak = by one, no = not at all. A task with no signal needs the encoder itself to "
          "change, so a short federated run of any method predicts the majority class.\n\n"
          + md_table(rows, COLUMNS) + "\n" + machine_line(meta["machine"]) + "\n")
    paths = write_results(args.name, rows, md, meta)
    print(md)
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
