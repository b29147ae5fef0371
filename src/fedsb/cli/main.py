"""The ``fedsb`` command line: argument parsing, dispatch, and one-line errors (no traceback)."""

from __future__ import annotations

import argparse
import sys

from fedsb.cli.args import pop_resume, split_run_args  # noqa: E402
from fedsb.environment import apply_offline_env, quiet_libraries
from fedsb.errors import FedsbError, UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsb", description="Federated LoRA-SB (Fed-SB) fine-tuning and baselines.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run a federated job in the in-process simulator",
                       description="Run a federated job. Any config key can be overridden: --rank 8, --method fedit, "
                                   "--clients 5, --rounds 3, --out DIR, --federation.partition iid, --dp.epsilon 1.")
    r.add_argument("config", nargs="?", help="TOML config file (default: the embedded quickstart)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed round")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--KEY", metavar="VALUE", help="override any config key (section.key), e.g. --rank 8 --dp.epsilon 1")
    sub.add_parser("methods", help="list the federated methods")
    e = sub.add_parser("export", help="export a run's adapter as a merged model and/or a PEFT adapter")
    e.add_argument("run_dir")
    e.add_argument("--merged", help="output directory for the merged model (safetensors)")
    e.add_argument("--peft", help="output directory for a PEFT LoRA adapter")
    sub.add_parser("presets", help="list the config presets")
    sub.add_parser("flower", help="run on Flower: `fedsb flower simulate|deploy|app ...` (see `fedsb flower --help`)")
    ev = sub.add_parser("eval", help="per-task accuracy of a run's (or a PEFT adapter's) causal LM, written to JSON",
                        description="Evaluate a run directory or PEFT adapter on one or more tasks (data files, "
                                    "directories, a directory of test-set directories, builtin or hub names).")
    ev.add_argument("target", help="run directory (fedsb run --out) or PEFT adapter directory")
    ev.add_argument("--task", action="append", default=[], help="task to evaluate (repeatable)")
    ev.add_argument("--format", default="auto", help="data format: auto, commonsense, gsm8k, metamath, nli, jsonl")
    ev.add_argument("--max-examples", type=int, help="evaluate a seeded sample of N examples per task")
    ev.add_argument("--mode", default="auto", help="auto | likelihood | generate")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-length", type=int, help="token limit of prompt + answer (default: max(run's, 512))")
    ev.add_argument("--threads", type=int, help="torch threads")
    ev.add_argument("--device", default="cpu", help="cpu | cuda | auto (PEFT adapters; runs use their config)")
    ev.add_argument("--out", help="JSON report path (default: TARGET/eval.json)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("compare", help="run several methods/ranks/seeds on one model and data split; table + Pareto plot",
                       description="Compare methods on the same model, data split, local budget and seeds: accuracy vs "
                                   "parameters communicated per client per round. Any config key can be overridden as "
                                   "in `fedsb run` (--rounds 3, --clients 5, --out DIR).")
    c.add_argument("config", nargs="?", help="TOML config file (default: the embedded quickstart)")
    c.add_argument("--methods", default="all", help="comma-separated methods, or all (default: every registered method)")
    c.add_argument("--fedsb-ranks", default="4,8,16", help="ranks of the r x r-core methods, Fed-SB and RAVAN (comma-separated)")
    c.add_argument("--lora-rank", default="8", help="rank of the LoRA baselines")
    c.add_argument("--seeds", default="3", help="number of seeds (seed, seed+1, ...)")
    c.add_argument("--workers", help="parallel runs (processes; default: one per core, at most 4)")
    c.add_argument("--tune-lr", metavar="F1,F2,...", help="first tune each method's learning rate: its default times each "
                   "multiplier, scored on a validation slice of the training data (e.g. 0.3,1,3)")
    c.add_argument("--lr-from", metavar="TUNING_JSON", help="reuse the rates an earlier --tune-lr chose (its tuning.json), "
                   "e.g. for another split of the same task")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_argument("--resume", action="store_true", help="continue an interrupted comparison in --out: finished runs "
                   "are kept, the others run (the command must be the same)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--KEY", metavar="VALUE", help="override any config key, as in `fedsb run`")
    return p


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv and argv[0] == "--debug":  # `fedsb --debug run ...`: the subcommand comes next
        argv = argv[1:]
    parser = build_parser()
    try:
        if argv and argv[0] == "run" and not ({"-h", "--help"} & set(argv)):
            from fedsb.cli.run import run
            from fedsb.config import resolve
            from fedsb.methods import method_options
            from fedsb.presets import load_presets

            resume_dir, run_args = pop_resume(argv[1:])
            config, flags, overrides = split_run_args(run_args)
            if resume_dir is not None:
                from fedsb.cli.run import resume

                if config is not None or "--overwrite" in flags:
                    raise UsageError("--resume continues a run with its saved config; drop the config file and --overwrite")
                resume(resume_dir, overrides, progress="--no-progress" not in flags)
                return 0
            cfg = resolve(config, overrides, load_presets())
            method_options(cfg.method, cfg.method_options, cfg)  # an unknown method or option fails here, before any model loads
            run(cfg, overwrite="--overwrite" in flags, progress="--no-progress" not in flags)
            return 0
        if argv and argv[0] == "flower":
            from fedsb.cli.flower import flower

            return flower([a for a in argv[1:] if a != "--debug"])
        if argv and argv[0] == "compare" and not ({"-h", "--help"} & set(argv)):
            from fedsb.cli.compare import compare, eval_every_given, split_compare_args
            from fedsb.config import resolve
            from fedsb.methods import method_options
            from fedsb.presets import load_presets

            config, flags, spec, overrides = split_compare_args(argv[1:])
            cfg = resolve(config, overrides, load_presets())
            method_options(cfg.method, cfg.method_options, cfg)  # an unknown method or option fails here, before any model loads
            compare(cfg, spec, overwrite="--overwrite" in flags, progress="--no-progress" not in flags,
                    eval_every_set=eval_every_given(config, overrides), resume="--resume" in flags)
            return 0
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognised arguments: {' '.join(extra)}")
        if args.command == "methods":
            from fedsb.cli.methods import methods

            methods()
        elif args.command == "export":
            from fedsb.cli.export import export

            export(args.run_dir, args.merged, args.peft)
        elif args.command == "eval":
            from fedsb.cli.eval import evaluate

            evaluate(args.target, args.task, args.max_examples, args.mode, args.batch_size, args.max_length, args.out,
                     args.format, args.threads, args.device, progress=not args.no_progress)
        elif args.command == "presets":
            from fedsb.presets import load_presets

            for name, data in sorted(load_presets().items()):
                print(f"{name:<20} {data.get('description', '')}")
        else:
            parser.print_help()
            return 2
    except FedsbError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path through a file, no permission, disk full: one line, not a traceback
        if debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; check the path, its permissions and free disk space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0




