"""Flower run config -> fedsb config: the keys map one-to-one; transport keys live under ``flower.``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsb.errors import UsageError
from fedsb.flower.deploy import write_app
from fedsb.flower.serverapp import parse_run_config


def test_dotted_keys_map_to_fedsb_config() -> None:
    cfg, opts, extras = parse_run_config({"method": "fedit", "adapter.rank": 8, "federation.rounds": 3,
                                          "train.local_steps": 4, "flower.wire-dtype": "bfloat16", "flower.secagg": True,
                                          "flower.resume": True, "out": ""})
    assert (cfg.method, cfg.adapter.rank, cfg.federation.rounds, cfg.train.local_steps) == ("fedit", 8, 3, 4)
    assert opts.wire_dtype == "bfloat16" and opts.secagg and extras["flower.resume"] is True
    assert cfg.out is None


def test_unknown_keys_are_refused_with_a_hint() -> None:
    with pytest.raises(UsageError, match="federation.roundz"):
        parse_run_config({"federation.roundz": 3})
    with pytest.raises(UsageError, match="flower keys are"):
        parse_run_config({"flower.secure": True})


def test_config_file_then_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('method = "ffa-lora"\n[adapter]\nrank = 4\n')
    cfg, _, _ = parse_run_config({"flower.config-file": str(f), "adapter.rank": 2})
    assert cfg.method == "ffa-lora" and cfg.adapter.rank == 2


def test_app_pyproject_is_a_valid_flower_app(tmp_path: Path) -> None:
    import tomllib

    from flwr.common.config import flatten_dict

    app = write_app(tmp_path / "app", {"federation.rounds": 2})
    data = tomllib.loads((app / "pyproject.toml").read_text())
    assert data["tool"]["flwr"]["app"]["components"]["serverapp"] == "fedsb.flower.serverapp:app"
    flat = flatten_dict(data["tool"]["flwr"]["app"]["config"])
    cfg, opts, _ = parse_run_config(flat)
    assert cfg.federation.rounds == 2 and opts.wire_dtype == "float32"
