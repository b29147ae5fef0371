"""``fedsb flower ...`` argument handling (the runs themselves are tested in tests/flower/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.cli.flower import split_flower_args
from fedsb.errors import UsageError


def test_split_flower_args() -> None:
    config, opts, over = split_flower_args(["my.toml", "--secagg", "--wire-dtype", "bfloat16", "--supernodes=3",
                                            "--rank", "8", "--federation.rounds=2"])
    assert config == "my.toml"
    assert opts == {"secagg": True, "wire-dtype": "bfloat16", "supernodes": "3"}
    assert over == [("rank", "8"), ("federation.rounds", "2")]
    with pytest.raises(UsageError, match="needs a value"):
        split_flower_args(["--wire-dtype"])


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flower", "teleport"]) != 0
    assert "unknown flower subcommand" in capsys.readouterr().err
    assert main(["flower", "simulate", "--wire-dtype", "int4", "--model", "tiny-bert"]) != 0
    assert "--wire-dtype" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["flower", "simulate", "--model", "tiny-bert", "--out", str(tmp_path / "busy")]) != 0
    assert "--overwrite" in capsys.readouterr().err


def test_app_writes_a_flower_app(tmp_path: Path) -> None:
    assert main(["flower", "app", str(tmp_path / "app")]) == 0
    assert "fedsb.flower.clientapp:app" in (tmp_path / "app" / "pyproject.toml").read_text()


def test_resume_of_a_finished_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flwr.app import Context, RecordDict

    from fedsb.flower.clientapp import app as client_app
    from fedsb.flower.serverapp import serve
    from fedsb.flower.strategy import FlowerOptions
    from tests.flower.fakegrid import FakeGrid
    from tests.helpers import tiny_config

    out = tmp_path / "run"
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    serve(FakeGrid(client_app, 3), ctx, tiny_config(out=str(out), federation={"rounds": 1}), FlowerOptions())
    capsys.readouterr()
    assert main(["flower", "simulate", "--resume", "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["flower", "simulate", "--resume", "--rank", "3", "--out", str(out)]) != 0
    assert "saved config" in capsys.readouterr().err
