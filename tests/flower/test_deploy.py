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


@pytest.mark.long
@pytest.mark.slow
def test_two_supernodes_two_rounds_of_fed_sb_over_tls_with_supernode_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "several machines" setup on loopback: TLS on every connection and only registered SuperNodes."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    started: list[LocalDeployment] = []
    real_start = LocalDeployment.start

    def spy(self: LocalDeployment, *a, **kw):  # remember the deployment to check its processes afterwards
        started.append(self)
        return real_start(self, *a, **kw)

    monkeypatch.setattr(LocalDeployment, "start", spy)
    cfg = tiny_config(method="fed-sb", out=str(tmp_path / "run"), federation={"clients": 2, "rounds": 2})
    try:
        summary = deploy_run(cfg, FlowerOptions(), 2, home=tmp_path / "deploy", secure=True)
    finally:
        pids = [p.pid for d in started for p in d.procs]
        for d in started:
            d.stop()
    assert summary["rounds"] == 2 and "accuracy" in summary["final_metrics"]
    dep = summary["flower"]["deployment"]
    assert dep["supernodes"] == 2 and dep["wall_seconds"] > 0 and dep["tls_and_supernode_auth"]
    (dep_obj,) = started
    superlink_args = dep_obj.procs[0].args
    assert "--enable-supernode-auth" in superlink_args and "--insecure" not in superlink_args
    assert all("--auth-supernode-private-key" in p.args for p in dep_obj.procs[1:3])
    # every SuperNode pinned the model and task (and accepted the server's matching config: the run completed)
    assert all('model-name="tiny-bert" task="intent_recognition"' in p.args[p.args.index("--node-config") + 1]
               for p in dep_obj.procs[1:3])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["wire_upload_payload_bytes"] == r["upload_bytes_per_client"] * 2
        assert r["wire_download_payload_bytes"] == r["download_bytes_per_client"] * 2
    assert pids and not [p for p in pids if alive(p)], "every deployment process must be gone"
    assert not [c for p in pids for c in descendants(p)]
    assert os.environ["FLWR_HOME"] == str(tmp_path / "flwr-home")


def test_insecure_deployment_starts_and_every_process_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (insecure loopback) deployment: the SuperLink answers, both SuperNodes start, all die."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    dep = LocalDeployment(2, tmp_path / "deploy")
    try:
        dep.start()
        assert "--insecure" in dep.procs[0].args and all("--insecure" in p.args for p in dep.procs[1:])
        assert all(p.poll() is None for p in dep.procs)
        assert 'insecure = true' in (tmp_path / "deploy" / "cli" / "config.toml").read_text()
    finally:
        pids = [p.pid for p in dep.procs]
        dep.stop()
    assert len(pids) == 3 and not [p for p in pids if alive(p)]
