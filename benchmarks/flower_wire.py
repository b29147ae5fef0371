"""Wire bytes per round on Flower (run_simulation, real Flower messages) for Fed-SB vs FedIT on the default task.

Usage: python benchmarks/flower_wire.py [--rounds 2] [--methods fed-sb,fedit] [--wire float32,bfloat16]
Writes benchmarks/results/flower_wire.{md,csv,json}. Default task: MiniLM on BIG-bench intent_recognition,
Fed-SB r=16 (the quickstart), FedIT at the quickstart's LoRA rank 8, 3 clients.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, machine_line, md_table, write_results  # noqa: E402

from fedsb.config import resolve  # noqa: E402
from fedsb.flower.simulate import backend_config, simulate  # noqa: E402
from fedsb.flower.strategy import FlowerOptions  # noqa: E402
from fedsb.presets import load_presets  # noqa: E402

RANKS = {"fed-sb": 16, "fedit": 8, "ffa-lora": 8, "fedex-lora": 8, "flora": 8}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="fed-sb,fedit")
    ap.add_argument("--wire", default="float32")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    rows = []
    for wire in args.wire.split(","):
        for method in args.methods.split(","):
            cfg = resolve(None, [("method", method), ("rank", str(RANKS[method])), ("rounds", str(args.rounds)),
                                 ("train.local_steps", str(args.steps)), ("train.threads", "1"),
                                 ("out", f"/tmp/fedsb-flower-wire/{method}-{wire}")], load_presets())
            t0 = time.time()
            s = simulate(cfg, FlowerOptions(wire_dtype=wire), backend=backend_config(1.0))
            wall = time.time() - t0
            r = s.rows[-1]
            rows.append({
                "method": method, "rank": cfg.adapter.rank, "wire_dtype": wire, "clients": cfg.federation.clients,
                "rounds": cfg.federation.rounds,
                "up_payload_per_client": r["wire_upload_payload_bytes_per_client"],
                "down_payload_per_client": r["wire_download_payload_bytes_per_client"],
                "up_analytic_per_client": r["upload_bytes_per_client"], "down_analytic_per_client": r["download_bytes_per_client"],
                "up_messages_bytes_round": r["wire_upload_message_bytes"], "down_messages_bytes_round": r["wire_download_message_bytes"],
                "framing_round": r["wire_upload_framing_bytes"] + r["wire_download_framing_bytes"],
                "one_time_up_payload": s.rows[0]["wire_upload_payload_bytes"], "one_time_down_payload": s.rows[0]["wire_download_payload_bytes"],
                "accuracy": r.get("accuracy"), "wall_s": round(wall, 1),
            })
            print(rows[-1], flush=True)
    cols = [("method", "method", str), ("rank", "r", str), ("wire_dtype", "wire", str),
            ("up_payload_per_client", "up payload B/client/round", "{:,}".format),
            ("up_analytic_per_client", "analytic", "{:,}".format),
            ("down_payload_per_client", "down payload B/client/round", "{:,}".format),
            ("up_messages_bytes_round", "up messages B/round (all clients)", "{:,}".format),
            ("down_messages_bytes_round", "down messages B/round", "{:,}".format),
            ("one_time_up_payload", "setup up B (all)", "{:,}".format), ("one_time_down_payload", "setup down B (all)", "{:,}".format),
            ("accuracy", f"acc after {args.rounds} rounds", lambda v: "-" if v is None else f"{v:.4f}"), ("wall_s", "wall s", str)]
    m = machine_info(1)
    md = "# Flower wire bytes per round (run_simulation)\n\n" + md_table(rows, cols) + "\n\n" + machine_line(m) + "\n"
    write_results("flower_wire", rows, md, {"machine": m})
    print(md)


if __name__ == "__main__":
    main()
