"""benchmarks/commonsense.py: the pure parts (aggregation over seeds, the >= 10x traffic verdict, configs); no model."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from tests.benchmarks.loader import load_benchmark


@pytest.fixture(scope="module")
def cs():
    yield from load_benchmark("commonsense")


def run_row(cs: Any, variant: str, method: str, split: str, seed: int, macro: float, total: float) -> dict[str, Any]:
    return {"variant": variant, "method": method, "rank": 8, "split": split, "seed": seed, "lr": 1e-3,
            "accuracy_macro": macro, **{f"acc_{s}": macro for s in cs.SOURCES},
            "upload_bytes_per_client_round": total / 4, "download_bytes_per_client_round": total / 4,
            "one_time_bytes_per_client": total / 2, "total_bytes_per_client": total, "seconds": 10.0}


def test_aggregate_means_and_stds_over_seeds(cs) -> None:
    rows = [run_row(cs, "fedit", "fedit", "iid", s, m, 100.0) for s, m in [(0, 0.4), (1, 0.5), (2, 0.9)]]
    rows.append(run_row(cs, "fedit", "fedit", "source", 0, 0.2, 100.0))
    agg = {(a["variant"], a["split"]): a for a in cs.aggregate(rows)}
    iid = agg[("fedit", "iid")]
    assert iid["seeds"] == 3
    assert iid["accuracy_macro_mean"] == pytest.approx(statistics.mean([0.4, 0.5, 0.9]))
    assert iid["accuracy_macro_std"] == pytest.approx(statistics.stdev([0.4, 0.5, 0.9]))
    assert iid["acc_boolq"] == pytest.approx(0.6)
    assert agg[("fedit", "source")]["accuracy_macro_std"] == 0.0  # one seed: no spread


def test_base_row_is_the_single_base_evaluation_and_stays_out_of_the_verdict(cs) -> None:
    base = {"variant": cs.BASE, "method": "-", "rank": None, "split": "-", "seed": 0, "lr": None,
            "accuracy_macro": 0.9, **{f"acc_{s}": 0.9 for s in cs.SOURCES}, "seconds": 1.0}
    rows = [base, run_row(cs, "fed-sb-r16", "fed-sb", "iid", 0, 0.5, 1.0), run_row(cs, "fedit", "fedit", "iid", 0, 0.4, 100.0)]
    (row,) = cs.base_rows(rows)
    assert row["accuracy_macro_mean"] == 0.9 and row["split"] == "both"
    agg = cs.aggregate(rows)
    assert [a["variant"] for a in agg] == ["fed-sb-r16", "fedit"]  # the base model is no method
    assert cs.verdict(agg)["iid"]["baseline"] == "fedit"  # 0.9 would have won had it counted
    assert cs.base_rows(rows[1:]) == []


@pytest.mark.parametrize(("sb_macro", "sb_bytes", "expected"), [
    (0.60, 10.0, True),    # better and exactly 10x less traffic
    (0.60, 11.0, False),   # better but only ~9.1x less
    (0.50, 1.0, False),    # 100x less traffic but not better (ties do not count)
])
def test_verdict_needs_higher_accuracy_and_10x_less_traffic(cs, sb_macro: float, sb_bytes: float, expected: bool) -> None:
    rows = [run_row(cs, "fed-sb-r16", "fed-sb", "source", 0, 0.40, 1.0),  # the weaker rank is not the best
            run_row(cs, "fed-sb-r64", "fed-sb", "source", 0, sb_macro, sb_bytes),
            run_row(cs, "fedit", "fedit", "source", 0, 0.50, 100.0),
            run_row(cs, "ffa-lora", "ffa-lora", "source", 0, 0.45, 1000.0)]
    v = cs.verdict(cs.aggregate(rows))["source"]
    assert (v["fed_sb"], v["baseline"]) == ("fed-sb-r64", "fedit")
    assert v["traffic_ratio"] == pytest.approx(100.0 / sb_bytes)
    assert v["answer"] is expected


def test_verdict_is_per_split(cs) -> None:
    rows = [run_row(cs, "fed-sb-r16", "fed-sb", sp, 0, m, 1.0) for sp, m in [("source", 0.6), ("iid", 0.4)]]
    rows += [run_row(cs, "fedit", "fedit", sp, 0, 0.5, 100.0) for sp in ("source", "iid")]
    v = cs.verdict(cs.aggregate(rows))
    assert v["source"]["answer"] and not v["iid"]["answer"]


def test_configs_are_the_preset_with_the_run_keys_changed(cs) -> None:
    for quick in (False, True):
        for variant, (method, rank) in cs.variants([16, 64], 8).items():
            for split in cs.SPLITS:
                cfg = cs.build_config(method, rank, split, 1, "data", lr=2e-3, validation=True, quick=quick)
                assert (cfg.method, cfg.adapter.rank, cfg.federation.partition, cfg.seed) == (method, rank, split, 1)
                assert cfg.task.evaluate_on == "validation" and cfg.train.lr == 2e-3 and cfg.task.path == "data"
                assert cfg.model.name == "smollm2" and cfg.eval.mode == "likelihood"
                assert cfg.eval.every == cfg.federation.rounds and not cfg.eval.initial  # scored at the end only
                sizes = cs.QUICK if quick else cs.SIZES
                assert cfg.task.max_test_per_source == sizes["task"]["max_test_per_source"], variant
                assert cfg.federation.rounds == sizes["federation"]["rounds"]
                assert cfg.train.local_steps == sizes["train"]["local_steps"]
        assert cs.build_config("fedit", 8, "iid", 0, "d").task.evaluate_on == "test"


def part(cs: Any, rows: list[dict[str, Any]], **sizes: Any) -> dict[str, Any]:
    meta = {"quick": False, "fedsb_ranks": [16], "lora_rank": 8, "clients": 3, "rounds": 3, "local_steps": 3,
            "batch_size": 8, "test_per_source": 40, "machine": {}, "wall_seconds": 60.0, "lr": {}, "tune_log": []}
    return {**meta, **sizes, "rows": rows}


@pytest.fixture
def results(cs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(cs, "RESULTS", tmp_path)
    monkeypatch.setattr(sys.modules["common"], "RESULTS", tmp_path)
    monkeypatch.setattr(cs, "machine_line", lambda m: "machine")
    return tmp_path


def write_part(path: Any, name: str, data: dict[str, Any]) -> None:
    import json

    (path / f"{name}.json").write_text(json.dumps(data))


def test_merge_keeps_one_base_row_and_refuses_overlaps_and_other_sizes(cs, results) -> None:
    import json

    base = {"variant": cs.BASE, "method": "-", "rank": None, "split": "-", "seed": 0, "lr": None,
            "accuracy_macro": 0.37, **{f"acc_{s}": 0.37 for s in cs.SOURCES}, "seconds": 1.0}
    write_part(results, "a", part(cs, [base, run_row(cs, "fed-sb-r16", "fed-sb", "iid", 0, 0.5, 1.0)]))
    write_part(results, "b", part(cs, [dict(base), run_row(cs, "fedit", "fedit", "iid", 0, 0.4, 100.0)]))
    cs.main(["--merge", "a", "b", "--name", "m"])
    merged = json.loads((results / "m.json").read_text())
    assert [r["variant"] for r in merged["rows"]] == [cs.BASE, "fed-sb-r16", "fedit"]
    assert merged["verdict"]["iid"]["answer"] is True
    write_part(results, "c", part(cs, [run_row(cs, "fedit", "fedit", "iid", 0, 0.4, 100.0)]))
    with pytest.raises(SystemExit, match="in two parts"):
        cs.main(["--merge", "b", "c", "--name", "m2"])
    write_part(results, "d", part(cs, [run_row(cs, "flora", "flora", "iid", 0, 0.4, 100.0)], local_steps=6))
    with pytest.raises(SystemExit, match="local_steps 3 vs 6"):
        cs.main(["--merge", "a", "d", "--name", "m3"])
