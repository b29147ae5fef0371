"""FedSA-LoRA: A is shared and averaged; B and the task head stay on each client, persist across rounds and
survive a checkpoint; evaluation is per client."""

from __future__ import annotations

from pathlib import Path

import torch

from fedsb.core.client import ClientTrainer
from fedsb.core.personal import client_test_shares
from fedsb.io.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from fedsb.methods.base import aggregation_weights
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config

OVER = {"federation": {"rounds": 3, "fraction": 0.67, "partition": "dirichlet", "dirichlet_alpha": 0.5}}


def private(name: str, head: list[str]) -> bool:
    return name.endswith("lora_B.weight") or name in head


class Recorder(Simulator):
    """A simulator that keeps every upload and every download it counted."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.uploads: list[dict[str, torch.Tensor]] = []
        self.downloads: list[dict[str, torch.Tensor]] = []

    def run_round(self, round_idx, payload, bar=None):
        self.downloads.append(dict(payload))
        row = super().run_round(round_idx, payload, bar)
        return row


def test_personal_b_and_head_never_leave_the_client() -> None:
    sim = Recorder(tiny_config("tiny-bert", "fedsa-lora", **OVER), progress=False)
    seen: list[dict[str, torch.Tensor]] = []
    real_aggregate = sim.fed.method.aggregate

    def aggregate(state, updates):
        seen.extend(u.payload for u in updates)
        return real_aggregate(state, updates)

    sim.fed.method.aggregate = aggregate  # type: ignore[method-assign]
    sim.run()
    head = sim.fed.adapted.head_state_names()
    assert seen and sim.downloads
    for payload in seen + sim.downloads:
        assert payload and all(k.endswith("lora_A.weight") for k in payload), sorted(payload)[:3]
        assert not any(private(k, head) for k in payload)
    # The ledger agrees: r * d_in per layer each way, and no head.
    r = sim.cfg.adapter.rank
    per_client = sum(r * layer.d_in for layer in sim.fed.adapted.layers.values())
    for row in sim.rows[1:]:
        assert row["upload_params_per_client"] == row["download_params_per_client"] == per_client


def test_the_server_averages_a_and_each_client_keeps_its_own_b() -> None:
    sim = Simulator(tiny_config("tiny-bert", "fedsa-lora", federation={"rounds": 1}), progress=False)
    captured = {}
    real_aggregate = sim.fed.method.aggregate

    def aggregate(state, updates):
        captured["updates"] = updates
        return real_aggregate(state, updates)

    sim.fed.method.aggregate = aggregate  # type: ignore[method-assign]
    res = sim.run()
    updates = captured["updates"]
    p = aggregation_weights(updates, "examples")
    for k, v in res.state.adapter.items():
        want = sum(w * u.payload[k].double() for w, u in zip(p, updates, strict=True))
        assert torch.allclose(v.double(), want, atol=1e-6), k
    bs = [sim.local_state[c] for c in range(3)]
    name = next(k for k in bs[0] if k.endswith("lora_B.weight"))
    assert all(float(b[name].abs().sum()) > 0 for b in bs), "each client trained its B away from 0"
    assert not torch.equal(bs[0][name], bs[1][name]), "clients keep different B's"


def test_a_client_resumes_from_its_own_b_not_another_clients() -> None:
    loaded: dict[int, dict[str, torch.Tensor]] = {}
    b_names: list[str] = []

    class Spy(ClientTrainer):
        def __call__(self, fed, c, r, off):
            if not b_names:
                b_names.extend(fed.method.local_names(fed.adapted))
            if r == 2:
                loaded[c] = fed.adapted.get_state(b_names)
            return super().__call__(fed, c, r, off)

    sim = Simulator(tiny_config("tiny-bert", "fedsa-lora", federation={"rounds": 2}), trainer=Spy(), progress=False)
    after_round1: dict[int, dict[str, torch.Tensor]] = {}

    def on_round(row):
        if row["round"] == 1:
            after_round1.update({c: dict(s) for c, s in sim.local_state.items()})

    sim.on_round = on_round
    sim.run()
    for c in range(3):
        for k in b_names:
            assert torch.equal(loaded[c][k], after_round1[c][k]), (c, k)


def test_local_state_survives_a_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config("tiny-bert", "fedsa-lora", federation={"rounds": 3})
    ref_sim = Simulator(cfg, progress=False)
    ref = ref_sim.run()
    first = Simulator(cfg, progress=False)

    def stop_after_1(row):
        save_checkpoint(tmp_path, first)
        if row["round"] == 1:
            raise KeyboardInterrupt

    first.on_round = stop_after_1
    try:
        first.run()
    except KeyboardInterrupt:
        pass
    resumed = Simulator(cfg, progress=False)
    start = restore_checkpoint(resumed, load_checkpoint(tmp_path))
    assert start == 2 and set(resumed.local_state) == {0, 1, 2} and resumed.local_start
    out = resumed.run(start_round=start)
    for c in range(3):
        for k, v in ref_sim.local_state[c].items():
            assert torch.equal(v, resumed.local_state[c][k]), (c, k)
    assert out.rows[-1]["accuracy"] == ref.rows[-1]["accuracy"]
    assert out.rows[-1]["personal_accuracy"] == ref.rows[-1]["personal_accuracy"]
    for k, v in ref.state.adapter.items():
        assert torch.equal(v, out.state.adapter[k]), k


def test_evaluation_is_per_client_on_its_own_test_share() -> None:
    res = Simulator(tiny_config("tiny-bert", "fedsa-lora", **OVER), progress=False).run()
    last = res.rows[-1]
    for key in ("accuracy", "accuracy_min", "personal_accuracy", "personal_accuracy_mean", "personal_accuracy_min"):
        assert 0.0 <= last[key] <= 1.0, key
    assert last["personal_accuracy_min"] <= last["personal_accuracy_mean"]
    assert last["accuracy_min"] <= last["accuracy"]


def test_test_shares_partition_the_test_set_and_follow_each_clients_labels() -> None:
    sim = Simulator(tiny_config("tiny-bert", "fedsa-lora", federation={"partition": "shards", "shards_per_client": 1},
                                task={"max_test_examples": 200}), progress=False)
    fed = sim.fed
    shares = client_test_shares(fed.task.test, fed.shards, 0)
    assert sorted(id(e) for s in shares for e in s) == sorted(id(e) for e in fed.task.test)
    assert shares == client_test_shares(fed.task.test, fed.shards, 0)  # deterministic
    for shard, share in zip(fed.shards, shares, strict=True):
        train_labels = {e.label for e in shard}
        assert share and {e.label for e in share} <= train_labels, "a client is tested on labels it holds"
