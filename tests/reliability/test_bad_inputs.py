"""Table-driven bad inputs to the ``fedsb`` CLI: configs, overrides, data files, model and adapter paths.

Each case asserts the exit code, a one-line ``error: ...`` message containing the key words, no traceback,
and that nothing under the test's directory changed: a pre-existing run directory (passed as ``--out`` with
``--overwrite``, the strongest temptation to clobber it) is untouched and no partial output appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedsb.cli import main
from fedsb.errors import UsageError

TINY = ["--model", "tiny-bert", "--rounds", "1", "--steps", "1", "--rank", "4", "--init.samples", "4",
        "--task.max_test_examples", "8", "--task.max_length", "16", "--train.threads", "1", "--no-progress"]


def run_args(*extra: str, out: bool = True) -> list[str]:
    """``fedsb run`` on tiny-bert with ``extra`` last (later overrides win), replacing ``{existing}``."""
    return ["run", *TINY, *(["--out", "{existing}", "--overwrite"] if out else []), *extra]


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    words: tuple[str, ...]


BB = {"examples": [{"input": f"text {i}", "target_scores": {"a": int(i % 2 == 0), "b": int(i % 2 == 1)}} for i in range(20)]}

# Files written under {tmp} before each case (name -> bytes/str/JSON).
FILES: dict[str, object] = {
    "bad.toml": "rank = = 3\n",
    "unknown_key.toml": "[adapter]\nrnak = 8\n",
    "not_table.toml": "federation = 3\n",
    "wrong_type.toml": '[adapter]\nrank = "eight"\n',
    "data/empty.json": "",
    "data/garbage.json": "this is { not json\n",
    "data/truncated.json": '{"examples": [\n  {"input": "a",\n',
    "data/no_examples.json": {"name": "x"},
    "data/no_input.json": {"examples": [{"target_scores": {"a": 1, "b": 0}}]},
    "data/no_target.json": {"examples": [{"input": "hello"}]},
    "data/generative.json": {"examples": [{"input": f"q{i}", "target": f"a{i}"} for i in range(10)]},
    "data/bad_scores.json": {"examples": [{"input": "x", "target_scores": ["a", "b"]}]},
    "data/one_example.json": {"examples": [BB["examples"][0]]},
    "data/bad_line.jsonl": '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response":\n',
    "data/missing_field.jsonl": '{"prompt": "a"}\n',
    "data/unknown_format.jsonl": '{"x": 1, "y": 2}\n',
    "data/not_utf8.json": b"\xff\xfe\x00garbage",
    "data/adir/README": "not data",
    "emptymodel/README.md": "no config.json here",
    "runs/no_config/metrics.jsonl": "{}\n",
    "runs/no_ckpt/config.toml": 'method = "fed-sb"\n',
    "runs/bad_ckpt/config.toml": 'method = "fed-sb"\n',
    "runs/bad_ckpt/checkpoint.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage",
}

CASES: list[Case] = [
    # --- command line and overrides (usage errors, exit 2) ---
    Case("unknown-option", run_args("--rnak", "8"), 2, ("unknown option --rnak", "rank")),
    Case("unknown-section-key", run_args("--federation.clinets", "3"), 2, ("federation.clinets", "clients")),
    Case("unknown-section", run_args("--fedration.clients", "3"), 2, ("fedration", "federation")),
    Case("rank-not-integer", run_args("--rank", "abc"), 2, ("adapter.rank", "integer")),
    Case("rounds-fractional", run_args("--rounds", "1.5"), 2, ("federation.rounds", "integer")),
    Case("rank-zero", run_args("--rank", "0"), 2, ("adapter.rank", "out of range")),
    Case("rank-negative", run_args("--rank", "-4"), 2, ("adapter.rank", ">= 1")),
    Case("rank-above-min-dims", run_args("--rank", "64"), 2, ("rank 64", "min(d_in, d_out) = 32", "lower adapter.rank")),
    Case("fraction-zero", run_args("--fraction", "0"), 2, ("federation.fraction", "> 0")),
    Case("fraction-above-one", run_args("--fraction", "1.5"), 2, ("federation.fraction", "<= 1")),
    Case("clients-zero", run_args("--clients", "0"), 2, ("federation.clients", "out of range")),
    Case("more-clients-than-examples", run_args("--clients", "5000"), 2, ("federation.clients = 5000", "training examples")),
    Case("epsilon-zero", run_args("--epsilon", "0"), 2, ("dp.epsilon", "> 0")),
    Case("epsilon-negative", run_args("--dp.epsilon", "-1"), 2, ("dp.epsilon", "out of range")),
    Case("delta-above-one", run_args("--dp.epsilon", "1", "--dp.delta", "2"), 2, ("dp.delta", "<= 1")),
    Case("unknown-method", run_args("--method", "fedsb"), 2, ("unknown method", "fed-sb")),
    Case("bad-choice", run_args("--federation.partition", "iidd"), 2, ("federation.partition", "iid")),
    Case("min-clients-above-clients", run_args("--federation.min_clients", "5"), 2, ("min_clients = 5", "clients = 3")),
    Case("min-clients-above-sampled", run_args("--clients", "4", "--fraction", "0.5", "--federation.min_clients", "3"), 2,
         ("min_clients = 3", "sampled per round")),
    Case("override-without-value", [*run_args(), "--rank"], 2, ("--rank needs a value",)),
    Case("stray-argument", ["run", "{tmp}/bad.toml", "extra"], 2, ("unexpected argument", "extra")),
    Case("override-two-dots", run_args("--a.b.c", "1"), 2, ("at most one dot",)),
    Case("unknown-preset", run_args("--preset", "nope"), 2, ("unknown preset", "nope")),
    Case("lr-negative", run_args("--lr", "-0.1"), 2, ("train.lr", "> 0")),
    Case("lr-nan", run_args("--lr", "nan"), 2, ("train.lr", "out of range")),
    Case("lr-inf", run_args("--lr", "inf"), 2, ("train.lr", "out of range")),
    Case("bool-not-bool", run_args("--dp.allow_loose_delta", "maybe"), 2, ("dp.allow_loose_delta", "true or false")),
    Case("warmup-ratio-above-one", run_args("--train.warmup_ratio", "2"), 2, ("train.warmup_ratio", "<= 1")),
    Case("max-length-tiny", run_args("--task.max_length", "2"), 2, ("task.max_length", ">= 8")),
    Case("threads-zero", run_args("--train.threads", "0"), 2, ("train.threads", ">= 1")),
    Case("norm-factor-negative", run_args("--federation.norm_factor", "-1"), 2, ("federation.norm_factor", ">= 0")),
    Case("seed-negative", run_args("--seed", "-1"), 2, ("seed", ">= 0")),
    Case("out-is-a-file", run_args("--out", "{tmp}/bad.toml", out=False), 2, ("bad.toml", "is a file")),
    Case("out-under-a-file", run_args("--out", "{tmp}/bad.toml/run", out=False), 1, ("bad.toml/run", "not a directory")),
    Case("out-exists-without-overwrite", run_args("--out", "{existing}", out=False), 2, ("already exists", "--overwrite", "--resume")),
    # --- config files ---
    Case("config-missing", ["run", "{tmp}/nope.toml"], 2, ("nope.toml", "not found")),
    Case("config-not-toml", ["run", "{tmp}/bad.toml", "--out", "{existing}", "--overwrite"], 2, ("bad.toml", "not valid TOML")),
    Case("config-unknown-key", ["run", "{tmp}/unknown_key.toml", "--out", "{existing}", "--overwrite"], 2, ("adapter.rnak", "rank")),
    Case("config-section-not-table", ["run", "{tmp}/not_table.toml"], 2, ("[federation]", "table")),
    Case("config-wrong-type", ["run", "{tmp}/wrong_type.toml"], 2, ("adapter.rank", "integer", "eight")),
    # --- models and target modules ---
    Case("model-path-missing", run_args("--model", "/nonexistent/model-dir"), 1, ("/nonexistent/model-dir", "does not exist")),
    Case("hub-id-not-cached", run_args("--model", "no-such-org/no-such-model", "--model.kind", "classification"), 1,
         ("cannot load model", "no-such-org/no-such-model", "offline")),
    Case("model-dir-without-config", run_args("--model", "{tmp}/emptymodel", "--model.kind", "classification"), 1,
         ("cannot load model", "emptymodel")),
    Case("targets-match-nothing", run_args("--model.targets", "nope_proj"), 2, ("nope_proj", "match no linear layer", "query", "value")),
    Case("head-missing", run_args("--model.head", "no_head"), 2, ("no_head", "not found")),
    Case("device-without-gpu", run_args("--model.device", "cuda"), 1, ("model.device", "no CUDA GPU")),
    # --- data files ---
    Case("public-init-data-missing", run_args("--init.source", "public", "--init.public_path", "{tmp}/data/none.json"), 1,
         ("init.public_path", "not found")),
    # fails inside the adapter initialisation, after the run directory was set up: rolled back, old run restored
    Case("public-init-data-invalid", run_args("--init.source", "public", "--init.public_path", "{tmp}/data/generative.json"), 1,
         ("generative", "target_scores")),
    Case("data-missing", run_args("--data", "{tmp}/data/none.json"), 1, ("none.json", "not found")),
    Case("data-empty", run_args("--data", "{tmp}/data/empty.json"), 1, ("empty.json", "is empty")),
    Case("data-not-json", run_args("--data", "{tmp}/data/garbage.json"), 1, ("garbage.json:1", "not valid JSON")),
    Case("data-truncated-json", run_args("--data", "{tmp}/data/truncated.json"), 1, ("truncated.json:3", "not valid JSON")),
    Case("data-not-utf8", run_args("--data", "{tmp}/data/not_utf8.json"), 1, ("not_utf8.json", "UTF-8")),
    Case("data-no-examples", run_args("--data", "{tmp}/data/no_examples.json"), 1, ("no_examples.json", "'examples'")),
    Case("data-example-without-input", run_args("--data", "{tmp}/data/no_input.json"), 1, ("no_input.json", "example 0", "'input'")),
    Case("data-example-without-target", run_args("--data", "{tmp}/data/no_target.json"), 1, ("no_target.json", "example 0", "target")),
    Case("data-bad-target-scores", run_args("--data", "{tmp}/data/bad_scores.json"), 1, ("bad_scores.json", "'target_scores'")),
    Case("data-generative-for-classifier", run_args("--data", "{tmp}/data/generative.json"), 1, ("generative", "target_scores")),
    Case("data-too-few-examples", run_args("--data", "{tmp}/data/one_example.json"), 1, ("training", "test examples")),
    Case("data-is-directory", run_args("--data", "{tmp}/data/adir"), 1, ("adir", "directory")),
    # --- export: run/adapter directories ---
    Case("export-missing-dir", ["export", "{tmp}/runs/none", "--peft", "{tmp}/peft"], 1, ("runs/none", "not found")),
    Case("export-nothing-to-do", ["export", "{run}"], 2, ("nothing to export", "--peft")),
    Case("export-no-config", ["export", "{tmp}/runs/no_config", "--peft", "{tmp}/peft"], 2, ("config.toml", "not found")),
    Case("export-adapter-missing", ["export", "{run_no_adapter}", "--peft", "{tmp}/peft"], 1, ("adapter_state.safetensors", "missing")),
    Case("export-adapter-corrupt", ["export", "{run_corrupt_adapter}", "--peft", "{tmp}/peft"], 1,
         ("adapter_state.safetensors", "not a valid safetensors")),
    Case("export-adapter-mismatch", ["export", "{run_other_rank}", "--merged", "{tmp}/merged"], 1,
         ("adapter_state.safetensors", "does not fit the model", "shape")),
    # --- PEFT adapter directories (fedsb eval) ---
    Case("adapter-dir-missing", ["eval", "{tmp}/nope_adapter", "--task", "2_digit_addition"], 2, ("nope_adapter", "not a directory")),
    Case("adapter-weights-missing", ["eval", "{peft_no_weights}", "--task", "2_digit_addition"], 1,
         ("adapter_model.safetensors is missing", "incomplete")),
    Case("adapter-weights-pickle", ["eval", "{peft_pickle}", "--task", "2_digit_addition"], 1, ("adapter_model.bin", "pickle")),
    Case("adapter-weights-corrupt", ["eval", "{peft_corrupt}", "--task", "2_digit_addition"], 1,
         ("adapter_model.safetensors", "not a valid safetensors")),
    Case("adapter-config-broken", ["eval", "{peft_bad_config}", "--task", "2_digit_addition"], 1, ("adapter_config.json", "PEFT")),
    Case("adapter-other-model", ["eval", "{peft_mismatch}", "--task", "2_digit_addition"], 1,
         ("lora_A", "needs", "trained on another model")),
    Case("adapter-unknown-module", ["eval", "{peft_unknown_module}", "--task", "2_digit_addition"], 1,
         ("not a linear layer of the base model",)),
    # --- resume ---
    Case("resume-missing-dir", ["run", "--resume", "{tmp}/runs/none"], 2, ("cannot resume", "no such run directory")),
    Case("resume-needs-dir", ["run", "--resume"], 2, ("--resume needs the run directory",)),
    Case("resume-not-a-run", ["run", "--resume", "{tmp}/runs/no_config"], 2, ("no_config", "no config.toml")),
    Case("resume-no-checkpoint", ["run", "--resume", "{tmp}/runs/no_ckpt"], 1, ("checkpoint.safetensors", "missing", "--overwrite")),
    Case("resume-corrupt-checkpoint", ["run", "--resume", "{tmp}/runs/bad_ckpt"], 1, ("checkpoint", "not a valid checkpoint")),
    Case("resume-with-overwrite", ["run", "--resume", "{run}", "--overwrite"], 2, ("--resume", "drop", "--overwrite")),
    Case("resume-with-override", ["run", "--resume", "{run}", "--rank", "8"], 2, ("only --train.threads",)),
]

# JSON/JSONL loaders for causal LMs (tiny-llama): file and line numbers in the message.
JSONL_CASES: list[Case] = [
    Case("jsonl-bad-line", run_args("--model", "tiny-llama", "--data", "{tmp}/data/bad_line.jsonl"), 1,
         ("bad_line.jsonl:2", "not valid JSON")),
    Case("jsonl-missing-field", run_args("--model", "tiny-llama", "--data", "{tmp}/data/missing_field.jsonl", "--task.format", "jsonl"),
         1, ("missing_field.jsonl:1", "'response'")),
    Case("jsonl-unknown-format", run_args("--model", "tiny-llama", "--data", "{tmp}/data/unknown_format.jsonl"), 1,
         ("unknown_format.jsonl:1", "task.format")),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a hash of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete tiny run directory (for export/resume cases)."""
    d = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *TINY, "--out", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory) -> Path:
    """A valid PEFT LoRA adapter for the builtin tiny-llama (what `fedsb run ... --model tiny-llama` exports)."""
    from fedsb.adapters.model import AdaptedModel
    from fedsb.io.export import export_peft
    from fedsb.models.load import load_model

    loaded = load_model("tiny-llama", "causal-lm")
    adapted = AdaptedModel(loaded.model, loaded.targets, "lora", 4)
    adapted.init_lora(0)
    return export_peft(adapted, tmp_path_factory.mktemp("peft") / "adapter", "tiny-llama", "CAUSAL_LM")


def peft_variants(tmp: Path, adapter: Path) -> dict[str, str]:
    """Broken copies of a valid adapter: each misses or damages one thing."""
    from safetensors.torch import load_file, save_file

    out = {}
    for name in ("no_weights", "pickle", "corrupt", "bad_config", "mismatch", "unknown_module"):
        d = tmp / "peft" / name
        shutil.copytree(adapter, d)
        out[f"peft_{name}"] = str(d)
    w = "adapter_model.safetensors"
    (tmp / "peft" / "no_weights" / w).unlink()
    (tmp / "peft" / "pickle" / w).rename(tmp / "peft" / "pickle" / "adapter_model.bin")
    (tmp / "peft" / "corrupt" / w).write_bytes(b"\xff" * 32)
    (tmp / "peft" / "bad_config" / "adapter_config.json").write_text("{")
    t = load_file(str(adapter / w))
    save_file({k: (v[:, :-1].contiguous() if ".lora_A." in k else v) for k, v in t.items()}, str(tmp / "peft" / "mismatch" / w))
    save_file({k.replace("q_proj", "no_such_proj"): v for k, v in t.items()}, str(tmp / "peft" / "unknown_module" / w))
    return out


def prepare(tmp: Path, finished: Path, adapter: Path) -> dict[str, str]:
    for name, content in FILES.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            p.write_text(json.dumps(content))
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "config.toml").write_text('method = "fedit"\n')
    (existing / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.5}\n')
    (existing / "adapter").mkdir()
    (existing / "adapter" / "adapter_model.safetensors").write_bytes(b"previous results")
    run = tmp / "runs" / "finished"
    shutil.copytree(finished, run)
    no_adapter = tmp / "runs" / "no_adapter"
    shutil.copytree(finished, no_adapter)
    (no_adapter / "adapter_state.safetensors").unlink()
    corrupt = tmp / "runs" / "corrupt_adapter"
    shutil.copytree(finished, corrupt)
    (corrupt / "adapter_state.safetensors").write_bytes(b"\x00" * 64)
    other = tmp / "runs" / "other_rank"
    shutil.copytree(finished, other)
    cfg = (other / "config.toml").read_text()
    assert "rank = 4" in cfg
    (other / "config.toml").write_text(cfg.replace("rank = 4", "rank = 2"))
    return {"tmp": str(tmp), "existing": str(existing), "run": str(run), "run_no_adapter": str(no_adapter),
            "run_corrupt_adapter": str(corrupt), "run_other_rank": str(other), **peft_variants(tmp, adapter)}


def check_case(case: Case, tmp: Path, finished: Path, adapter: Path, capsys) -> None:
    where = prepare(tmp, finished, adapter)
    argv = [a.format(**where) for a in case.argv]
    before = snapshot(tmp)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == case.code, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in case.words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert "Traceback" not in out + err
    assert snapshot(tmp) == before, "a bad input changed files on disk"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, finished_run, peft_adapter, capsys):
    if case.id == "device-without-gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    check_case(case, tmp_path, finished_run, peft_adapter, capsys)


@pytest.mark.parametrize("case", JSONL_CASES, ids=[c.id for c in JSONL_CASES])
def test_bad_jsonl_input(case, tmp_path, finished_run, peft_adapter, capsys):
    check_case(case, tmp_path, finished_run, peft_adapter, capsys)


def test_the_unbroken_adapter_passes_the_checks(peft_adapter):
    from fedsb.io.peft_checks import check_peft_adapter
    from fedsb.models.load import load_model

    assert check_peft_adapter(peft_adapter, load_model("tiny-llama", "causal-lm").model)["r"] == 4


def test_at_least_30_distinct_bad_inputs():
    ids = [c.id for c in CASES + JSONL_CASES]
    assert len(ids) == len(set(ids)) >= 30


def test_debug_shows_the_traceback():
    with pytest.raises(UsageError, match="adapter.rank"):
        main(["--debug", "run", "--rank", "0"])


@pytest.mark.slow
def test_real_process_exit_codes_and_no_traceback(tmp_path):
    """The installed entry point, in a subprocess: exit status and stderr as a user sees them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "garbage.json").write_text("not json")
    for argv, code, word in [(["run", *TINY, "--data", str(tmp_path / "garbage.json"), "--out", str(tmp_path / "o")], 1,
                              "not valid JSON")]:
        p = subprocess.run([sys.executable, "-m", "fedsb.cli", *argv], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == code, p.stderr
        assert p.stderr.strip().count("\n") == 0 and word in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "o").exists()
