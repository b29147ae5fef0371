"""The typed schema: defaults, strict types, one-line messages, validated assignment, copies and the docs."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedsb.config import SECTIONS, RunConfig, TaskConfig, from_dict, resolve, validate
from fedsb.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]

# The defaults of every key, as the dataclass config had them (the TOML layout of a run's config.toml).
DEFAULTS = {
    "method": "fed-sb", "seed": 0, "out": None, "preset": None, "method_options": {},
    "model": {"name": "minilm", "kind": "auto", "dtype": "float32", "device": "cpu", "targets": None, "head": None},
    "task": {"name": "intent_recognition", "path": None, "subtasks": [], "format": "auto", "prompt_field": "prompt",
             "response_field": "response", "chat_template": "auto", "max_length": 64, "test_fraction": 0.2,
             "max_test_examples": None, "evaluate_on": "test", "validation_fraction": 0.15,
             "max_train_per_source": None, "max_test_per_source": None},
    "adapter": {"rank": 16, "alpha": None},
    "init": {"source": "federated-lowrank", "samples": 32, "eta": 0.001, "svd": "lowrank", "oversample": 8, "niter": 2,
             "public_path": None, "batch_size": 16, "lowrank_rank": 0, "lowrank_bits": 8, "broadcast_bits": 4},
    "federation": {"clients": 3, "rounds": 5, "fraction": 1.0, "partition": "dirichlet", "dirichlet_alpha": 0.5,
                   "split_by": "label", "shards_per_client": 2, "weighting": "examples", "min_clients": 1, "norm_factor": 2.0,
                   "max_change_norm": None, "max_examples_factor": 2.0, "init_norm_factor": 1.0,
                   "source_home_share": 0.8},
    "train": {"local_steps": 10, "local_epochs": None, "batch_size": 16, "lr": None, "head_lr": None, "weight_decay": 0.0,
              "warmup_ratio": 0.1, "schedule": "cosine", "max_grad_norm": 1.0, "threads": None},
    "eval": {"every": 1, "initial": True, "batch_size": 64, "mode": "auto", "personal": "auto"},
    "dp": {"mode": "off", "epsilon": None, "delta": None, "max_grad_norm": 1.0, "noise_multiplier": None,
           "allow_loose_delta": False, "accountant": "rdp", "init_noise_multiplier": None, "reproducible_noise": False},
    "tracking": {"backends": []},
}


def test_defaults_and_to_dict_layout() -> None:
    d = RunConfig().to_dict()
    assert d == DEFAULTS
    assert {k: type(v) for k, v in d["federation"].items()} == {k: type(v) for k, v in DEFAULTS["federation"].items()}
    assert from_dict(d).to_dict() == d  # a saved config.toml loads back to the same config


# (input, the one-line message): the messages of the dataclass loader, kept word for word.
MESSAGES = [
    ({"rnak": 8}, "unknown config key 'rnak'; see README 'Configuration'"),
    ({"adapter": {"\n": None}}, "unknown config key 'adapter.\\n'; see README 'Configuration'"),
    ({"federaton": {}}, "unknown config key 'federaton' (did you mean 'federation'?); see README 'Configuration'"),
    ({3: 1}, "unknown config key 3; see README 'Configuration'"),
    ({"adapter": {"rnak": 8}}, "unknown config key 'adapter.rnak' (did you mean 'rank'?); see README 'Configuration'"),
    ({"federation": 3}, "[federation] must be a table, got int"),
    ({"adapter": {"rank": "eight"}}, "adapter.rank must be an integer, got str 'eight'"),
    ({"adapter": {"rank": 8.0}}, "adapter.rank must be an integer, got float 8.0"),
    ({"adapter": {"rank": True}}, "adapter.rank must be an integer, got bool True"),
    ({"seed": 2**64}, f"seed = {2**64} is too large; use a 64-bit integer"),
    ({"train": {"lr": "0.1"}}, "train.lr must be a number, got str '0.1'"),
    ({"train": {"lr": 10**400}}, f"train.lr = {10**400} is too large for a number"),
    ({"dp": {"allow_loose_delta": "maybe"}}, "dp.allow_loose_delta must be true or false, got 'maybe'"),
    ({"dp": {"allow_loose_delta": 1}}, "dp.allow_loose_delta must be true or false, got 1"),
    ({"task": {"name": 3}}, "task.name must be a string, got int 3"),
    ({"model": {"kind": 3}}, "model.kind must be a string, got int 3"),
    ({"model": {"targets": 3}}, "model.targets must be a list, got int 3"),
    ({"model": {"targets": ["q", 1]}}, "model.targets must be a string, got int 1"),
    ({"federation": {"partition": "iidd"}},
     "federation.partition = 'iidd' is not valid (did you mean 'iid'?); choose one of: iid, dirichlet, shards, source"),
    ({"adapter": {"rank": 0}}, "adapter.rank = 0 is out of range; it must be >= 1"),
    ({"federation": {"fraction": 0}}, "federation.fraction = 0.0 is out of range; it must be > 0 and <= 1"),
    ({"federation": {"fraction": 1.5}}, "federation.fraction = 1.5 is out of range; it must be > 0 and <= 1"),
    ({"train": {"lr": float("nan")}}, "train.lr = nan is out of range; it must be > 0"),
    ({"train": {"lr": float("inf")}}, "train.lr = inf is out of range; it must be > 0"),
    ({"seed": -1}, "seed = -1 is out of range; it must be >= 0 and <= 4.29497e+09"),
    ({"task": {"max_length": 2}}, "task.max_length = 2 is out of range; it must be >= 8"),
    ({"federation": {"min_clients": 5}}, "federation.min_clients = 5 exceeds federation.clients = 3; lower it"),
    ({"federation": {"clients": 4, "fraction": 0.5, "min_clients": 3}},
     "federation.min_clients = 3 exceeds the 2 clients sampled per round (fraction x clients), so every round would be "
     "skipped; lower it or raise federation.fraction"),
    ({"dp": {"mode": "sample"}}, "dp.mode = 'sample' needs dp.epsilon (a privacy budget) or dp.noise_multiplier"),
    # several errors: an unknown key or a wrong type first, in the order of the file; then choices; then ranges
    ({"adapter": {"rank": 0}, "eval": {"mode": "x"}, "train": {"lr": "a"}, "task": {"nmae": 1}},
     "train.lr must be a number, got str 'a'"),
    ({"adapter": {"rank": 0}, "eval": {"mode": "x"}}, "eval.mode = 'x' is not valid; choose one of: auto, likelihood, generate"),
]


@pytest.mark.parametrize(("data", "message"), MESSAGES, ids=[m[:40] for _, m in MESSAGES])
def test_one_line_messages(data: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        validate(from_dict(data))
    assert str(e.value) == message
    assert e.value.exit_code == 2


def test_types_as_toml_writes_them() -> None:
    cfg = from_dict({"train": {"lr": 1}, "model": {"targets": "query, value,", "head": []}, "dp": {"epsilon": 2}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an integer is a number
    assert cfg.model.targets == ["query", "value"] and cfg.model.head == []  # a comma-separated string is a list
    cfg = resolve(None, [("rank", "8"), ("model.targets", "q,v"), ("dp.epsilon", "1")])
    assert (cfg.adapter.rank, cfg.model.targets, cfg.dp.mode, cfg.dp.epsilon) == (8, ["q", "v"], "sample", 1.0)
    assert resolve(None, [("dp.mode", "client"), ("dp.epsilon", "1")]).init.source == "federated"
    assert resolve(None, [("dp.mode", "client"), ("dp.epsilon", "1"), ("init.source", "public")]).init.source == "public"


def test_assignment_is_validated() -> None:
    cfg = RunConfig()
    cfg.train.threads = 1
    cfg.out = "runs/x"
    assert (cfg.train.threads, cfg.out) == (1, "runs/x")
    with pytest.raises(UsageError, match=r"^train.threads = 0 is out of range; it must be >= 1$"):
        cfg.train.threads = 0
    with pytest.raises(UsageError, match=r"^dp.mode = 'of' is not valid \(did you mean 'off'\?\)"):
        cfg.dp.mode = "of"
    with pytest.raises(UsageError, match=r"^seed must be an integer, got str '1'$"):
        cfg.seed = "1"  # type: ignore[assignment]
    assert (cfg.train.threads, cfg.dp.mode, cfg.seed) == (1, "off", 0)  # a refused value leaves the old one


def test_direct_construction_is_validated() -> None:
    assert TaskConfig(path="d/task.json").label == "d"
    with pytest.raises(UsageError, match=r"^task.format = 'jsnl' is not valid \(did you mean 'jsonl'\?\); choose one of: auto"):
        TaskConfig(format="jsnl")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^unknown config key 'task.fromat' \(did you mean 'format'\?\)"):
        TaskConfig(fromat="jsonl")  # type: ignore[call-arg]


def test_validate_rechecks_a_config_built_without_validation() -> None:
    cfg = RunConfig().model_copy(update={"seed": -1})  # model_copy(update=...) does not validate
    with pytest.raises(UsageError, match=r"^seed = -1 is out of range"):
        validate(cfg)


def test_copies_are_deep_and_equal() -> None:
    cfg = resolve(None, [("rank", "8"), ("model.targets", "q,v")])
    # (pickling, which spawned compare workers use, is exercised by tests/cli/test_compare.py's worker tests)
    for other in (copy.deepcopy(cfg), cfg.model_copy(deep=True)):
        assert other == cfg and other.to_dict() == cfg.to_dict()
        other.adapter.rank = 4
        other.model.targets.append("k")  # type: ignore[union-attr]
        assert (cfg.adapter.rank, cfg.model.targets) == (8, ["q", "v"])


def test_config_is_the_bottom_layer() -> None:
    """``fedsb.config`` imports nothing of fedsb but itself and ``fedsb.errors``, even while validating."""
    code = ("import sys; from fedsb.config import resolve; resolve(None, [('method', 'fedit')]); "
            "print(sorted(m for m in sys.modules if m.startswith('fedsb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # noqa: S307 (our own print of a list of names)
    assert [m for m in loaded if m != "fedsb.errors" and m != "fedsb" and not m.startswith("fedsb.config")] == []


def documented_keys(text: str) -> set[str]:
    """``section.key`` names docs/configuration.md documents: in its TOML example (commented or not) or by name."""
    keys = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", text)) | set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    for line in text.splitlines():  # | `dp.*` | off | differential privacy: `mode`, `epsilon`, ... |
        if m := re.match(r"\| `([a-z_]+)\.\*` \|", line):
            keys |= {f"{m.group(1)}.{k}" for k in re.findall(r"`([a-z_]+)`", line.split("|")[3])}
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        section = ""
        for line in block.splitlines():
            if m := re.match(r"\[([a-z_]+)\]", line):
                section = m.group(1) + "."
            elif m := re.match(r"(?:# )?([a-z_]+) = ", line):
                keys.add(section + m.group(1))
            keys |= {section + k for k in re.findall(r"# or ([a-z_]+) = ", line)}  # local_steps = 10  # or local_epochs = 1.0
    return keys


def test_every_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = [k for k in RunConfig.model_fields if k not in SECTIONS]
    keys += [f"{s}.{k}" for s, model in SECTIONS.items() for k in model.model_fields]
    missing = [k for k in keys if k not in documented_keys(text)]
    assert not missing, f"docs/configuration.md does not document {missing}"
