"""Local training step: a Fed-SB client vs a PEFT LoRA client (PEFT's own ``get_peft_model``), same rank/model/batch.

Both wrap the embedded model (all-MiniLM-L6-v2 classifier) with adapters of rank r on
query/key/value/attention.output.dense plus the trainable classifier head, and run the same loop on the
same pre-tokenised batches of the embedded task: forward, cross-entropy, backward, grad-norm clip, AdamW
step. Timing: one process, the two models alternate in blocks of ``--steps`` steps (ABBA order, so neither
always runs first), ``--reps`` blocks each after a warm-up; we report the median seconds per step and the
ratio Fed-SB / PEFT (goal: <= 1.0x). Memory: each client runs again in its own fresh process (peak RSS is
per process), reporting the RSS added by training (peak while stepping minus RSS before the first step,
sampled every 2 ms) and the process peak.

    python benchmarks/step_time.py [--rank 16] [--batch 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, machine_info, machine_line, md_table, peak_rss_bytes, quiet, rss_bytes, write_results  # noqa: E402

TARGETS = ["query", "key", "value", "attention.output.dense"]


def build(kind: str, rank: int, seed: int = 0):
    """(model, trainable params) for ``fedsb`` (LoRA-SB via fedsb.adapters) or ``peft`` (PEFT LoRA)."""
    import torch

    from fedsb.config import TaskConfig
    from fedsb.models.load import load_model
    from fedsb.tasks import load_task

    labels = len(load_task(TaskConfig(), "classification", 0).labels)
    loaded = load_model("minilm", "classification", num_labels=labels, seed=seed)
    model = loaded.model
    if kind == "fedsb":
        from fedsb.adapters.model import AdaptedModel

        adapted = AdaptedModel(model, TARGETS, "lora-sb", rank, head=["classifier"])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # orthonormal B, A and a diagonal R: the shapes and costs of a LoRA-SB init
            for layer in adapted.layers.values():
                layer.lora_B.weight.copy_(torch.linalg.qr(torch.randn(layer.d_out, rank, generator=g))[0])
                layer.lora_A.weight.copy_(torch.linalg.qr(torch.randn(layer.d_in, rank, generator=g))[0].T)
                layer.lora_R.weight.copy_(torch.diag(torch.rand(rank, generator=g)) * 1e-3)
        return adapted.model, list(adapted.trainable_parameters()), loaded.tokenizer
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=TARGETS, task_type="SEQ_CLS")
    pm = get_peft_model(model, cfg)
    return pm, [p for p in pm.parameters() if p.requires_grad], loaded.tokenizer


def make_batches(tokenizer, batch: int, n: int, max_length: int = 64):
    import torch

    from fedsb.config import TaskConfig
    from fedsb.tasks import load_task

    task = load_task(TaskConfig(), "classification", 0)
    ex = task.train
    out = []
    for i in range(n):
        chunk = [ex[(i * batch + j) % len(ex)] for j in range(batch)]
        enc = tokenizer([e.text for e in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = dict(enc)
        enc["labels"] = torch.tensor([e.label for e in chunk])
        out.append(enc)
    return out


class Client:
    def __init__(self, kind: str, rank: int, lr: float) -> None:
        import torch

        self.model, self.params, self.tokenizer = build(kind, rank)
        self.model.train()
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.trainable = sum(p.numel() for p in self.params)

    def step(self, batch) -> float:
        import torch
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss = F.cross_entropy(self.model(**inputs).logits.float(), batch["labels"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return loss.item()


def time_block(client: Client, batches, steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        client.step(batches[i % len(batches)])
    return (time.perf_counter() - t0) / steps


def memory_child(kind: str, rank: int, batch: int, steps: int, threads: int) -> dict:
    """Run in a fresh process: RSS added by ``steps`` training steps, and the process peak."""
    import torch

    torch.set_num_threads(threads)
    client = Client(kind, rank, 1e-3)
    batches = make_batches(client.tokenizer, batch, 4)
    before = rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for i in range(steps):
        client.step(batches[i % len(batches)])
    stop.set()
    th.join()
    return {"rss_before": before, "train_increment": peak[0] - before, "peak_rss": peak_rss_bytes()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=6, help="timed blocks per client")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-child", choices=["fedsb", "peft"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    quiet()

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.rank, args.batch, args.steps, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    clients = {"fedsb": Client("fedsb", args.rank, 1e-3), "peft": Client("peft", args.rank, 1e-3)}
    batches = make_batches(clients["fedsb"].tokenizer, args.batch, 8)
    seq = int(batches[0]["input_ids"].shape[1])
    for c in clients.values():  # warm-up: allocator, kernels, optimizer state
        time_block(c, batches, 3)
    times: dict[str, list[float]] = {"fedsb": [], "peft": []}
    for rep in range(args.reps):
        order = ["fedsb", "peft"] if rep % 2 == 0 else ["peft", "fedsb"]
        for k in order:
            times[k].append(time_block(clients[k], batches, args.steps))
    mem = {}
    for k in ("fedsb", "peft"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", k, "--rank", str(args.rank), "--batch",
                              str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)],
                             capture_output=True, text=True, timeout=900, check=True)
        mem[k] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    for k, label in (("fedsb", "Fed-SB (fedsb LoRA-SB, trains R + head)"), ("peft", "PEFT LoRA (get_peft_model, trains A, B + head)")):
        rows.append({
            "client": label, "rank": args.rank, "batch": args.batch, "seq_len": seq,
            "trainable_params": clients[k].trainable,
            "median_s_per_step": statistics.median(times[k]), "min_s_per_step": min(times[k]),
            "max_s_per_step": max(times[k]),
            "train_rss_increment_mb": mem[k]["train_increment"] / 1e6, "peak_rss_mb": mem[k]["peak_rss"] / 1e6,
        })
    ratio = rows[0]["median_s_per_step"] / rows[1]["median_s_per_step"]
    # per-rep ratios of adjacent blocks: robust to load changes between reps on a shared machine
    pair = statistics.median(f / p for f, p in zip(times["fedsb"], times["peft"], strict=True))
    best = rows[0]["min_s_per_step"] / rows[1]["min_s_per_step"]
    mem_ratio = rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
    cols = [("client", "client", str), ("rank", "r", str), ("trainable_params", "trainable", fmt(",d")),
            ("median_s_per_step", "median s/step", fmt(".4f")), ("min_s_per_step", "min", fmt(".4f")),
            ("max_s_per_step", "max", fmt(".4f")), ("train_rss_increment_mb", "RSS added by training (MB)", fmt(".1f")),
            ("peak_rss_mb", "process peak RSS (MB)", fmt(".0f"))]
    md = "\n".join([
        "# Local step time: Fed-SB vs PEFT LoRA",
        "",
        f"all-MiniLM-L6-v2 classifier, rank {args.rank} on {', '.join(TARGETS)} (24 layers) + classifier head, batch "
        f"{args.batch} (padded length {seq}) of the embedded task, AdamW, grad clip 1.0. {args.reps} blocks of "
        f"{args.steps} steps per client, alternating ABBA in one process after 3 warm-up steps each; memory from a "
        "fresh process per client. `python benchmarks/step_time.py`",
        "",
        md_table(rows, cols),
        f"**Fed-SB / PEFT step time: {ratio:.2f}x** of the medians (goal <= 1.0x: {'met' if ratio <= 1.0 else 'not met'}); "
        f"median of the per-rep ratios {pair:.2f}x; best block / best block {best:.2f}x. Peak RSS ratio {mem_ratio:.2f}x; "
        "RSS added by training "
        f"{rows[0]['train_rss_increment_mb']:.0f} MB vs {rows[1]['train_rss_increment_mb']:.0f} MB.",
        "",
        machine_line(machine),
        "",
    ])
    write_results("step_time", rows, md, {"machine": machine, "ratio": ratio, "pair_ratio": pair, "best_ratio": best,
                                          "memory_ratio": mem_ratio,
                                          "times": times, "args": vars(args)})
    print(md_table(rows, cols))
    print(f"Fed-SB / PEFT step time: medians {ratio:.3f}x, per-rep {pair:.3f}x, best {best:.3f}x (goal <= 1.0x); "
          f"peak RSS ratio {mem_ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
