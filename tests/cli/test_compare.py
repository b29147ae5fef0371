"""``fedsb compare`` end to end on tiny-bert: table rows, files, PNG, isolation between runs, CLI parsing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from fedsb.cli import main
from fedsb.cli.compare import CompareSpec, compare, split_compare_args
from fedsb.errors import UsageError
from tests.helpers import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_compare(tmp_path: Path, name: str, methods: list[str], ranks: list[int], seeds: int = 1, workers: int = 1):
    cfg = tiny_config(out=str(tmp_path / name), federation={"rounds": 2})
    spec = CompareSpec(methods=methods, fedsb_ranks=ranks, lora_rank=4, seeds=seeds, workers=workers)
    return compare(cfg, spec, progress=False)


def test_compare_two_methods_one_seed(tmp_path: Path) -> None:
    rows = run_compare(tmp_path, "cmp", ["fed-sb", "fedit"], [2, 4])
    assert [(r["method"], r["rank"]) for r in rows] == [("fed-sb", 2), ("fed-sb", 4), ("fedit", 4)]
    out = tmp_path / "cmp"
    with open(out / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["method"], int(t["rank"])) for t in table] == [("fed-sb", 2), ("fed-sb", 4), ("fedit", 4)]
    md = (out / "compare.md").read_text()
    assert sum(line.startswith("| fed-sb |") for line in md.splitlines()) == 2
    assert sum(line.startswith("| fedit |") for line in md.splitlines()) == 1
    png = (out / "compare.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    img = mpimg.imread(out / "compare.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    for method, rank in [("fed-sb", 2), ("fed-sb", 4), ("fedit", 4)]:
        summary = json.loads((out / "runs" / f"{method}-r{rank}-s0" / "summary.json").read_text())
        assert (summary["method"], summary["rank"]) == (method, rank)
    by = {(r["method"], r["rank"]): r for r in rows}
    # Fed-SB sends r^2 per layer (+ head) each way, FedIT r (d_in + d_out): the table must reflect it.
    assert by[("fed-sb", 2)]["upload_params"] < by[("fed-sb", 4)]["upload_params"] < by[("fedit", 4)]["upload_params"]
    assert by[("fed-sb", 4)]["one_time_bytes"] > 0 and by[("fedit", 4)]["one_time_bytes"] == 0
    assert all(0.0 <= r["accuracy_mean"] <= 1.0 and r["accuracy_std"] == 0.0 for r in rows)


def test_runs_do_not_leak_state(tmp_path: Path) -> None:
    """A run's result must not depend on which methods ran before it on the shared model."""
    alone = run_compare(tmp_path, "a", ["fed-sb"], [4])
    after = run_compare(tmp_path, "b", ["fedex-lora", "flora", "fed-sb"], [4])
    la = json.loads((tmp_path / "a" / "runs" / "fed-sb-r4-s0" / "summary.json").read_text())["final_metrics"]
    lb = json.loads((tmp_path / "b" / "runs" / "fed-sb-r4-s0" / "summary.json").read_text())["final_metrics"]
    assert la["loss"] == lb["loss"]
    assert alone[0]["accuracy_mean"] == after[-1]["accuracy_mean"]


@pytest.mark.slow  # spawns two worker processes (imports torch twice): ~20-50 s on a shared 2-core box
def test_seeds_aggregate_and_workers_do_not_change_results(tmp_path: Path) -> None:
    one = run_compare(tmp_path, "s", ["fed-sb", "fedit"], [4], seeds=2, workers=1)
    assert one[0]["seeds"] == 2 and len(one[0]["accuracies"]) == 2
    names = {"fed-sb-r4-s0", "fed-sb-r4-s1", "fedit-r4-s0", "fedit-r4-s1"}
    assert {p.name for p in (tmp_path / "s" / "runs").iterdir()} == names
    two = run_compare(tmp_path, "p", ["fed-sb", "fedit"], [4], seeds=2, workers=2)
    assert [r["accuracies"] for r in two] == [r["accuracies"] for r in one]
    for n in names:
        loss = [json.loads((tmp_path / d / "runs" / n / "summary.json").read_text())["final_metrics"]["loss"] for d in "sp"]
        assert loss[0] == loss[1]


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["compare", "--model", "tiny-bert", "--model.kind", "classification", "--methods", "fed-sb,ffa-lora",
               "--fedsb-ranks", "2", "--lora-rank", "2", "--seeds", "1", "--workers", "1", "--rounds", "1", "--steps", "1",
               "--task.max_test_examples", "8", "--train.threads", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "ffa-lora" in capsys.readouterr().out
    cfg_text = (out / "runs" / "ffa-lora-r2-s0" / "config.toml").read_text()
    assert "rounds = 1" in cfg_text and 'method = "ffa-lora"' in cfg_text
    assert main(["compare", "--methods", "fed-sb", "--workers", "1", "--out", str(out), "--no-progress"]) == 2  # exists, no --overwrite


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "fedsb"], "did you mean 'fed-sb'"),
        (["--fedsb-ranks", "4,x"], "comma-separated integers"),
        (["--seeds", "0"], "positive"),
        (["--workers", "1,2"], "one number"),
        (["--rank", "8"], "--fedsb-ranks"),
        (["--method", "fedit"], "--methods"),
        (["--task.evaluate_on", "validation"], "the table is always on test"),
    ],
)
def test_bad_arguments(args: list[str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        split_compare_args(args)


def test_split_args() -> None:
    config, flags, spec, over = split_compare_args(["my.toml", "--methods=fedit,flora", "--rounds", "3", "--overwrite"])
    assert config == "my.toml" and flags == {"--overwrite"}
    assert spec.variants() == [("fedit", 8), ("flora", 8)]
    assert over == [("rounds", "3")]


def test_tune_lr_scores_on_validation_never_test_and_uses_the_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsb.cli.compare as cmp

    seen: list[tuple[str, float | None, bool, str]] = []
    real = cmp.SharedModel.run

    def spy(self, method, rank, seed, path, lr=None, validation=False):
        r = real(self, method, rank, seed, path, lr, validation)
        seen.append((method, lr, validation, self.task(seed, validation).name))
        return r

    monkeypatch.setattr(cmp.SharedModel, "run", spy)
    cfg = tiny_config(out=str(tmp_path / "t"), federation={"rounds": 1})
    spec = CompareSpec(methods=["fedit", "fedsa-lora"], lora_rank=4, seeds=1, workers=1, tune_lr=[0.1, 1.0, 10.0])
    rows = compare(cfg, spec, progress=False)
    tuning = json.loads((tmp_path / "t" / "tuning.json").read_text())
    tuned = [s for s in seen if s[2]]
    n_tuned = sum(len(t) for t in tuning["trials"].values())
    assert len(tuned) == n_tuned and 6 <= n_tuned <= 6 + 2 * cmp.TUNE_EXTENSIONS
    assert all("[validation]" in s[3] for s in tuned)
    assert all("[validation]" not in s[3] and not s[2] for s in seen[n_tuned:])
    for row in rows:
        trials = tuning["trials"][f"{row['method']} r={row['rank']}"]
        best = max(trials, key=lambda t: t[2])
        assert row["lr"] == pytest.approx(tuning["chosen"][f"{row['method']} r={row['rank']}"])
        assert [t[2] for t in trials if t[0] == pytest.approx(row["lr"])][0] == pytest.approx(best[2])
    assert (tmp_path / "t" / "tuning.md").read_text().count("|") > 10
    personal = next(r for r in rows if r["method"] == "fedsa-lora")
    assert personal["personalised"] and personal["own_share_accuracy_mean"] is not None
    assert "fedsa-lora (personal)" in (tmp_path / "t" / "compare.md").read_text()


@pytest.mark.parametrize(("peak", "expected"), [(1e9, [0.1, 1.0, 10.0, 100.0, 1000.0]), (2.0, [0.1, 1.0, 10.0]),
                                               (1e-9, [0.001, 0.01, 0.1, 1.0, 10.0]), (30.0, [0.1, 1.0, 10.0, 100.0])])
def test_tuning_walks_past_a_winning_grid_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peak: float,
                                               expected: list[float]) -> None:
    """A best rate on an edge of the grid is tried one step further out (at most TUNE_EXTENSIONS times), so a
    method is never compared at a rate its own tuning was still improving on; an interior best stops the walk."""
    import math

    from rich.console import Console

    import fedsb.cli.compare as cmp

    def fake_jobs(cfg, jobs, workers, on_result) -> None:  # validation accuracy peaks at lr = base * peak
        for _, m, r, s, path, lr, validation in jobs:
            assert validation
            f = lr / cmp.base_lr(cfg, m, r)
            on_result(cmp.RunResult(m, r, s, {"lr": lr, "final_metrics": {"accuracy": -abs(math.log(f / peak))}},
                                    Path(path)))

    monkeypatch.setattr(cmp, "run_jobs", fake_jobs)
    cfg = tiny_config(out=str(tmp_path / "t"))
    spec = CompareSpec(methods=["fedit"], lora_rank=4, seeds=1, workers=1, tune_lr=[0.1, 1.0, 10.0])
    chosen = cmp.tune_learning_rates(cfg, spec, tmp_path, 1, Console(quiet=True), False)
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    tried = [t[1] for t in tuning["trials"]["fedit r=4"]]
    assert tried == pytest.approx(expected)
    best_f = min(expected, key=lambda f: abs(math.log(f / peak)))
    assert chosen[("fedit", 4)] == pytest.approx(cmp.base_lr(cfg, "fedit", 4) * best_f)
    assert "| fedit | 4 |" in (tmp_path / "tuning.md").read_text()


def test_methods_all_and_tune_lr_arguments() -> None:
    from fedsb.methods import METHODS

    _, _, spec, _ = split_compare_args(["--methods", "all", "--tune-lr", "3,0.3,1"])
    assert spec.methods == list(METHODS) and spec.tune_lr == [0.3, 1.0, 3.0]
    with pytest.raises(UsageError, match="positive multipliers"):
        split_compare_args(["--tune-lr", "0,1"])


def test_lr_from_reuses_an_earlier_tuning(tmp_path: Path) -> None:
    """--lr-from runs every variant at the rate an earlier --tune-lr chose, and refuses a file that lacks one."""
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"chosen": {"fedit r=4": 0.0123, "ffa-lora r=4": 0.0456}}))
    _, _, spec, _ = split_compare_args(["--methods", "fedit,ffa-lora", "--lora-rank", "4", "--seeds", "1",
                                        "--lr-from", str(tuning)])
    cfg = tiny_config(out=str(tmp_path / "t"), federation={"rounds": 1})
    rows = compare(cfg, spec, progress=False)
    assert {r["method"]: r["lr"] for r in rows} == pytest.approx({"fedit": 0.0123, "ffa-lora": 0.0456})
    assert json.loads((tmp_path / "t" / "tuning-reused.json").read_text())["reused_from"] == str(tuning)
    _, _, spec, _ = split_compare_args(["--methods", "fedit,flora", "--lora-rank", "4", "--lr-from", str(tuning)])
    with pytest.raises(UsageError, match="no tuned rate for flora r=4"):
        compare(tiny_config(out=str(tmp_path / "u")), spec, progress=False)
    assert not (tmp_path / "u").exists()  # refused before anything is written
    for bad in ["--lr-from", str(tmp_path / "none.json")], ["--lr-from", "x", "--tune-lr", "1,3"]:
        with pytest.raises(UsageError, match="--lr-from"):
            _, _, spec, _ = split_compare_args(bad)
            compare(tiny_config(out=str(tmp_path / "v")), spec, progress=False)


def test_resume_keeps_finished_runs_and_refuses_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted comparison (here: one run's summary missing) resumes with only the unfinished run, to the
    same table; a resume with other settings, or together with --overwrite, is refused."""
    import fedsb.cli.compare as cmp

    cfg = tiny_config(out=str(tmp_path / "t"), federation={"rounds": 1})
    spec = CompareSpec(methods=["fedit", "ffa-lora"], lora_rank=4, seeds=1, workers=1)
    first = compare(cfg, spec, progress=False)
    (tmp_path / "t" / "runs" / "ffa-lora-r4-s0" / "summary.json").unlink()  # killed before it finished
    ran: list[str] = []
    real = cmp.SharedModel.run

    def spy(self, method, rank, seed, path, lr=None, validation=False):
        ran.append(method)
        return real(self, method, rank, seed, path, lr, validation)

    monkeypatch.setattr(cmp.SharedModel, "run", spy)
    again = compare(tiny_config(out=str(tmp_path / "t"), federation={"rounds": 1}), spec, progress=False, resume=True)
    assert ran == ["ffa-lora"]
    assert [(r["method"], r["accuracy_mean"]) for r in again] == [(r["method"], r["accuracy_mean"]) for r in first]
    # the wall time reported is this invocation's, and says it covers 1 of the 2 runs
    assert "for the 1 runs of this invocation (1 more were finished by an interrupted one" in (tmp_path / "t" / "compare.md").read_text()
    with pytest.raises(UsageError, match="other settings"):
        compare(tiny_config(out=str(tmp_path / "t"), federation={"rounds": 2}), spec, progress=False, resume=True)
    with pytest.raises(UsageError, match="--resume"):
        compare(cfg, spec, progress=False, resume=True, overwrite=True)
    assert ran == ["ffa-lora"]
