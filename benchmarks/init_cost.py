"""LoRA-SB initialisation cost: gradient collection + SVD vs the whole run, and svd_lowrank vs exact SVD.

1. The embedded default (Fed-SB r=16, all-MiniLM-L6-v2, 3 clients x 5 rounds x 10 steps, dense federated
   init from 32 examples per client): time of the clients' gradient sums, of the server's combine + SVD,
   and the whole run (``Simulator.run``), so the init's share of the run.
2. SVD methods on the same run's 24 update directions ``dW = -eta sign(sum of grads)`` (384 x 384, r=16)
   and on Mistral-7B-sized ones (q_proj 4096 x 4096 at the paper's r=200, a synthetic sign matrix of a
   low-rank-plus-noise "gradient"): time, and quality = ||dW - approx||_F relative to the optimal rank-r
   error (1.0 = as good as the exact SVD) and subspace agreement (mean cos^2 of the principal angles between
   the two top-r left singular subspaces).

    python benchmarks/init_cost.py [--threads 1] [--big-rank 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, machine_info, machine_line, md_table, quiet, save_png, write_results  # noqa: E402

SVD_VARIANTS = [("exact", "exact", 0, 0), ("lowrank q=r+8, niter=2 (default)", "lowrank", 8, 2),
                ("lowrank q=r+8, niter=4", "lowrank", 8, 4), ("lowrank q=r+8, niter=0", "lowrank", 8, 0)]


def svd_quality(m, rank: int, method: str, oversample: int, niter: int, exact_cache: dict):
    """(seconds, error / optimal error, subspace cos^2) of one SVD variant; the exact SVD (run first) is cached."""
    import torch

    from fedsb.adapters.lora_sb_init import truncated_svd

    t0 = time.perf_counter()
    u, s, v = truncated_svd(m, rank, method, oversample, niter, seed=0)  # type: ignore[arg-type]
    secs = time.perf_counter() - t0
    key = id(m)
    if key not in exact_cache:
        ue, se = (u, s) if method == "exact" else truncated_svd(m, rank, "exact")[:2]
        # Eckart-Young: the optimal rank-r error is sqrt(||m||_F^2 - sum of the top-r singular values squared)
        best = float(torch.sqrt(torch.clamp((m.double() ** 2).sum() - (se.double() ** 2).sum(), min=0)))
        exact_cache[key] = (ue, best)
    ue, best = exact_cache[key]
    err = float(torch.linalg.norm((m - (u * s) @ v.T).double()))
    cos2 = float((torch.linalg.svdvals(ue.T @ u) ** 2).mean())
    return secs, err / best if best > 0 else 1.0, cos2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--big-rank", type=int, default=200)
    ap.add_argument("--big-dim", type=int, default=4096, help="side of the large sign matrix (Mistral q_proj: 4096)")
    ap.add_argument("--from-compare", help="take the whole-run and in-run init times from the fed-sb r=16 runs of a "
                                           "`fedsb compare` directory instead of running the default again")
    args = ap.parse_args()
    import torch

    quiet()
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    torch.linalg.svd(torch.randn(64, 64), full_matrices=False)  # warm-up: LAPACK's first call is slow
    torch.svd_lowrank(torch.randn(64, 64), q=8)
    from fedsb.adapters.lora_sb_init import lora_sb_init_from_directions
    from fedsb.config import from_dict, validate
    from fedsb.core.federation import build_federation, client_init_message, layer_shapes
    from fedsb.init.sources import init_source_for
    from fedsb.simulation.simulator import Simulator

    cfg = validate(from_dict({"train": {"threads": args.threads}}))  # the embedded default
    fed = build_federation(cfg)
    k = len(fed.shards)
    # 1. init phases, timed the way the simulator runs them
    t0 = time.perf_counter()
    messages = [client_init_message(fed, c) for c in range(k)]
    t_grad = time.perf_counter() - t0
    source = init_source_for(cfg.init, cfg.adapter.rank, layer_shapes(fed), cfg.seed)
    t0 = time.perf_counter()
    directions = source.combine(messages)
    t_combine = time.perf_counter() - t0
    t0 = time.perf_counter()
    lora_sb_init_from_directions(fed.adapted, directions, cfg.init.svd, cfg.init.oversample, cfg.init.niter, cfg.seed)
    t_svd = time.perf_counter() - t0
    # the whole default run (it repeats the init inside; its own init_seconds is reported too)
    if args.from_compare:
        import json

        runs = sorted(Path(args.from_compare).glob(f"runs/fed-sb-r{cfg.adapter.rank}-s*/summary.json"))
        if not runs:
            raise SystemExit(f"no fed-sb r={cfg.adapter.rank} runs under {args.from_compare}")
        sums = [json.loads(r.read_text()) for r in runs]
        t_run = sum(x["wall_seconds"] for x in sums) / len(sums)
        run_init = sum(x["init_seconds"] for x in sums) / len(sums)
        run_src = f"mean of {len(sums)} seeds in {args.from_compare}"
    else:
        fed_run = build_federation(cfg)
        t0 = time.perf_counter()
        result = Simulator(cfg, fed=fed_run, progress=False).run()
        t_run = time.perf_counter() - t0
        run_init = result.summary["init_seconds"]
        run_src = "run here"
    phases = [
        {"phase": f"gradient sums ({k} clients x {cfg.init.samples} examples, {len(fed.adapted.layers)} layers)",
         "seconds": t_grad},
        {"phase": "server combine (sum, -eta sign)", "seconds": t_combine},
        {"phase": f"SVD ({cfg.init.svd}, r={cfg.adapter.rank}) + set B, A, R0", "seconds": t_svd},
        {"phase": f"init inside the run (Simulator.initialise; {run_src})", "seconds": run_init},
        {"phase": f"whole default run ({cfg.federation.rounds} rounds, incl. init and evaluations; {run_src})",
         "seconds": t_run},
    ]
    share = run_init / t_run
    # 2. SVD variants: real directions of the embedded run, and Mistral-sized sign matrices
    svd_rows = []
    cache: dict = {}
    mats = list(directions.values())
    for label, method, over, niter in SVD_VARIANTS:
        secs, rel, cos2 = 0.0, [], []
        for m in mats:
            s_, r_, c_ = svd_quality(m, cfg.adapter.rank, method, over, niter, cache)
            secs += s_
            rel.append(r_)
            cos2.append(c_)
        svd_rows.append({"matrix": f"embedded run dW, {len(mats)} x {tuple(mats[0].shape)}", "rank": cfg.adapter.rank,
                         "svd": label, "seconds": secs, "rel_error_vs_optimal": max(rel),
                         "subspace_cos2": sum(cos2) / len(cos2)})
    g = torch.Generator().manual_seed(0)
    d = args.big_dim
    low = torch.randn(d, 32, generator=g) @ torch.randn(32, d, generator=g)
    grad = low + 0.5 * low.std() * torch.randn(d, d, generator=g)
    big = -1e-3 * torch.sign(grad)
    del low, grad
    for label, method, over, niter in SVD_VARIANTS:
        secs, rel, cos2 = svd_quality(big, args.big_rank, method, over, niter, cache)
        svd_rows.append({"matrix": f"sign matrix {d}x{d}" + (" (Mistral-7B q_proj size)" if d == 4096 else ""),
                         "rank": args.big_rank, "svd": label,
                         "seconds": secs, "rel_error_vs_optimal": rel, "subspace_cos2": cos2})
        print(f"{label:<34} {d}x{d} r={args.big_rank}: {secs:7.2f} s, error x{rel:.4f} of optimal, cos2 {cos2:.4f}",
              flush=True)
    pcols = [("phase", "phase", str), ("seconds", "seconds", fmt(".2f"))]
    scols = [("matrix", "matrices", str), ("rank", "r", str), ("svd", "SVD", str), ("seconds", "seconds", fmt(".3f")),
             ("rel_error_vs_optimal", "error / optimal (worst)", fmt(".4f")), ("subspace_cos2", "subspace cos^2", fmt(".4f"))]
    exact_big = next(r for r in svd_rows if r["svd"] == "exact" and r["rank"] == args.big_rank)["seconds"]
    low_big = next(r for r in svd_rows if r["svd"].endswith("(default)") and r["rank"] == args.big_rank)["seconds"]
    summary = (f"**LoRA-SB init = {run_init:.1f} s of a {t_run:.1f} s default run ({100 * share:.1f}%)**; "
               f"gradient sums {t_grad:.2f} s, combine {t_combine:.2f} s, SVD {t_svd:.2f} s. On a {d}x{d} sign matrix "
               f"(r={args.big_rank}) svd_lowrank takes {low_big:.1f} s vs {exact_big:.1f} s exact "
               f"({exact_big / max(low_big, 1e-9):.1f}x faster) per layer.")
    md = "\n".join([
        "# LoRA-SB initialisation cost",
        "",
        f"Embedded default (Fed-SB r={cfg.adapter.rank}, {k} clients, dense federated init from {cfg.init.samples} "
        f"examples per client, eta {cfg.init.eta}), {args.threads} torch thread(s). `python benchmarks/init_cost.py`",
        "",
        md_table(phases, pcols),
        summary,
        "",
        "## SVD: svd_lowrank vs exact",
        "",
        "*error / optimal*: Frobenius error of the rank-r approximation divided by the exact SVD's (Eckart-Young) "
        "error, worst layer; *subspace cos^2*: mean squared cosine of the principal angles between the top-r left "
        "singular subspaces of the variant and of the exact SVD (1 = identical).",
        "",
        md_table(svd_rows, scols),
        "",
        "![init cost](init_cost.png)",
        "",
        machine_line(machine),
        "",
    ])
    write_results("init_cost", phases + svd_rows, md, {"machine": machine, "init_share": share, "summary": summary})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.barh([p["phase"][:40] for p in phases], [p["seconds"] for p in phases])
    ax1.set_xlabel("seconds")
    ax1.set_title("init phases vs the whole default run", fontsize=9)
    big_rows = [r for r in svd_rows if r["rank"] == args.big_rank]
    ax2.bar([r["svd"].replace(" (default)", "\n(default)") for r in big_rows], [r["seconds"] for r in big_rows])
    ax2.set_ylabel("seconds")
    ax2.set_title(f"SVD of a {d}x{d} sign matrix, r={args.big_rank}", fontsize=9)
    ax2.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    save_png(fig, "init_cost")
    print(md_table(phases, pcols))
    print(md_table(svd_rows, scols))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
