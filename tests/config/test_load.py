"""Loading: presets, files and overrides; the method name is checked by every entry point, outside the config layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsb.cli import main
from fedsb.config import resolve
from fedsb.errors import UsageError
from fedsb.methods import get_method

UNKNOWN = ("unknown method 'fedsb' (did you mean 'fed-sb'?); choose one of: fed-sb, fedit, ffa-lora, fedex-lora, flora, "
           "fedsvd, rolora, fedsa-lora, ravan")


def test_precedence_defaults_preset_file_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('preset = "p"\n[adapter]\nrank = 4\n[federation]\nrounds = 2\n')
    presets = {"p": {"description": "d", "adapter": {"rank": 2, "alpha": 8}, "federation": {"clients": 5}}}
    cfg = resolve(str(f), [("rounds", "3")], presets)
    assert (cfg.adapter.rank, cfg.adapter.alpha, cfg.federation.clients, cfg.federation.rounds) == (4, 8.0, 5, 3)
    with pytest.raises(UsageError, match=r"^unknown preset 'pp' \(did you mean 'p'\?\); see `fedsb presets`$"):
        resolve(None, [("preset", "pp")], presets)


def test_overrides() -> None:
    with pytest.raises(UsageError, match=r"^unknown option --rnak \(did you mean 'rank'\?\); see `fedsb run --help`$"):
        resolve(None, [("rnak", "8")])
    with pytest.raises(UsageError, match=r"^override --a.b.c: keys have at most one dot"):
        resolve(None, [("a.b.c", "1")])
    cfg = resolve(None, [("train.local-steps", "3"), ("task", "42"), ("method", "fedit")])
    assert (cfg.train.local_steps, cfg.task.name, cfg.method) == (3, "42", "fedit")  # names stay strings


def test_get_method_suggests_the_closest_name() -> None:
    assert get_method("fedit").name == "fedit"
    with pytest.raises(UsageError) as e:
        get_method("fedsb")
    assert str(e.value) == UNKNOWN


@pytest.mark.parametrize("argv", [["run", "--method", "fedsb"], ["compare", "bad.toml"], ["flower", "simulate", "--method", "fedsb"]],
                         ids=["run", "compare", "flower"])
def test_entry_points_refuse_an_unknown_method_before_any_model(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import fedsb.core.federation

    def no_model(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded before the method was checked")

    monkeypatch.setattr(fedsb.core.federation, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text('method = "fedsb"\n')  # compare takes the methods from --methods, a file may name one
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {UNKNOWN}"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]  # no run directory


def test_flower_run_config_refuses_an_unknown_method() -> None:
    from fedsb.flower.serverapp import parse_run_config

    with pytest.raises(UsageError) as e:
        parse_run_config({"method": "fedsb"})
    assert str(e.value) == UNKNOWN
