"""A real deployment on 127.0.0.1: SuperLink + 2 SuperNodes as separate processes, ``flwr run`` of the app."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedsb.flower.deploy import LocalDeployment, deploy_run, descendants
from fedsb.flower.strategy import FlowerOptions
from tests.helpers import tiny_config


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_two_supernodes_two_rounds_of_fed_sb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    started: list[LocalDeployment] = []
    real_start = LocalDeployment.start

    def spy(self: LocalDeployment, *a, **kw):  # remember the deployment to check its processes afterwards
        started.append(self)
        return real_start(self, *a, **kw)

    monkeypatch.setattr(LocalDeployment, "start", spy)
    cfg = tiny_config(method="fed-sb", out=str(tmp_path / "run"), federation={"clients": 2, "rounds": 2})
    try:
        summary = deploy_run(cfg, FlowerOptions(), 2, home=tmp_path / "deploy")
    finally:
        pids = [p.pid for d in started for p in d.procs]
        for d in started:
            d.stop()
    assert summary["rounds"] == 2 and "accuracy" in summary["final_metrics"]
    dep = summary["flower"]["deployment"]
    assert dep["supernodes"] == 2 and dep["wall_seconds"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["wire_upload_payload_bytes"] == r["upload_bytes_per_client"] * 2
        assert r["wire_download_payload_bytes"] == r["download_bytes_per_client"] * 2
    assert pids and not [p for p in pids if alive(p)], "every deployment process must be gone"
    assert not [c for p in pids for c in descendants(p)]
    assert os.environ["FLWR_HOME"] == str(tmp_path / "flwr-home")
