"""Run-directory files: the resolved config written as TOML reads back as the same config."""

from __future__ import annotations

import tomllib

from fedsb.config import from_dict, load_toml, resolve
from fedsb.io.rundir import RunDir, to_toml


def test_config_with_unicode_path_round_trips(tmp_path) -> None:
    cfg = resolve(None, [("task.path", "/data/silo 😀/intent \"v2\".json"), ("model.name", "tiny-bert")])
    rd = RunDir.create(tmp_path / "run")
    rd.path.joinpath("config.toml").write_text(to_toml(cfg.to_dict()), encoding="utf-8")
    back = from_dict(load_toml(rd.path / "config.toml"))
    assert back.task.path == "/data/silo 😀/intent \"v2\".json"
    assert back.to_dict() == cfg.to_dict()


def test_none_values_are_left_out() -> None:
    assert tomllib.loads(to_toml({"seed": None, "dp": {"epsilon": None, "mode": "off"}})) == {"dp": {"mode": "off"}}
