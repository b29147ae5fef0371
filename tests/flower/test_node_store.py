"""A FedSA-LoRA node keeps its personal tensors on its own disk, so a resumed Flower run (a new run: every
Context.state starts empty, and the server holds none of them) continues from them and ends where an
uninterrupted simulator run ends; a node without that disk makes the resume refuse instead of silently
restarting its tensors; each node exports its own final model where only it can read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.errors import FedsbError
from fedsb.flower import node_store
from fedsb.flower.clientapp import STATE_LOCAL
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.records import from_record
from fedsb.flower.serverapp import serve
from fedsb.flower.strategy import FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid, crash_on_train_round
from tests.helpers import tiny_config

ROUNDS, CRASH = 4, 3


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def with_store(root: Path):  # type: ignore[no-untyped-def]
    def node_config(i: int, k: int) -> dict[str, Any]:
        return {"partition-id": i, "num-partitions": k, "state-dir": str(root / f"node{i}")}
    return node_config


def crash_after_nodes_trained(grid: FakeGrid, n: int) -> None:
    """The ServerApp dies after the nodes trained (and saved) round n, before it got their replies."""
    real, calls = grid.send_and_receive, {"train": 0}

    def send_and_receive(messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        out = real(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "train":
            calls["train"] += 1
            if calls["train"] == n:
                raise KeyboardInterrupt("ServerApp killed")
        return out

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]


def crash_and_resume(cfg: Any, first: Any, second: Any, late: bool = False, between: Any = None) -> tuple[Any, FakeGrid]:
    grid = FakeGrid(client_app, 3, first)
    (crash_after_nodes_trained if late else crash_on_train_round)(grid, CRASH)
    with pytest.raises(KeyboardInterrupt):
        serve(grid, server_context(), cfg, FlowerOptions())
    if between is not None:
        between()
    again = FakeGrid(client_app, 3, second)
    return serve(again, server_context(), cfg, FlowerOptions(), resume=True), again


@pytest.mark.parametrize("late", [False, True], ids=["crash-before-round", "crash-after-nodes-trained"])
def test_a_resumed_fedsa_run_continues_each_nodes_own_tensors(late: bool, tmp_path: Path) -> None:
    cfg = tiny_config(method="fedsa-lora", out=str(tmp_path / "run"), federation={"rounds": ROUNDS, "fraction": 0.67})
    flower, grid = crash_and_resume(cfg, with_store(tmp_path), with_store(tmp_path), late=late)
    sim = Simulator(tiny_config(method="fedsa-lora", federation={"rounds": ROUNDS, "fraction": 0.67}), progress=False)
    ref = sim.run()
    for k, v in flower.state.adapter.items():
        assert float((v - ref.state.adapter[k]).abs().max()) <= 1e-6, k
    for i, node in enumerate(grid.nodes):
        own = from_record(grid.contexts[node].state.array_records[STATE_LOCAL])
        assert set(own) == set(sim.local_state[i])
        assert all(float((v - sim.local_state[i][k]).abs().max()) <= 1e-6 for k, v in own.items())
    assert flower.rows[-1]["personal_accuracy"] == sim.rows[-1]["personal_accuracy"]
    # Each node's final model, written on its own disk: its B and head with the last shared A.
    for i in range(3):
        store = next((tmp_path / f"node{i}").glob("*/partition-*"))
        assert (store / "adapter" / "adapter_config.json").is_file()
        saved = node_store.load_tensors(store / "adapter_state.safetensors")
        for k, v in sim.local_state[i].items():
            assert float((saved[k] - v).abs().max()) <= 1e-6, k


def test_a_resume_is_refused_when_a_node_kept_its_tensors_only_in_memory(tmp_path: Path) -> None:
    cfg = tiny_config(method="fedsa-lora", out=str(tmp_path / "run"), federation={"rounds": ROUNDS})
    with pytest.raises(FedsbError, match="partition 0 keeps its fedsa-lora tensors only in memory"):
        crash_and_resume(cfg, None, None)


def test_a_resume_is_refused_when_a_nodes_store_lost_rounds(tmp_path: Path) -> None:
    import shutil

    cfg = tiny_config(method="fedsa-lora", out=str(tmp_path / "run"), federation={"rounds": ROUNDS})
    with pytest.raises(FedsbError, match="partition 1 restored its own fedsa-lora tensors from round 0 but reported saving them "
                                         "after round 2; its state-dir lost rounds"):
        crash_and_resume(cfg, with_store(tmp_path), with_store(tmp_path), between=lambda: shutil.rmtree(tmp_path / "node1"))


def test_each_run_has_its_own_store_even_with_the_same_config(tmp_path: Path) -> None:
    cfg = tiny_config(method="fedsa-lora", federation={"rounds": 1})
    for i in range(2):
        serve(FakeGrid(client_app, 3, with_store(tmp_path)), server_context(), cfg.model_copy(update={"out": str(tmp_path / f"r{i}")}),
              FlowerOptions())
    runs = sorted(p.parent.name for p in (tmp_path / "node0").glob("*/partition-0"))
    assert len(runs) == 2 and all(len(r) == 32 for r in runs)
    assert all(node_store.saved_rounds(p) == [1] for p in (tmp_path / "node0").glob("*/partition-0"))
    node = Context(run_id=1, node_id=1, node_config={"state-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    with pytest.raises(FedsbError, match="is not 32 hex digits"):
        node_store.store_dir(node, "../../etc", 0)


def test_the_store_keeps_what_a_resume_can_need_and_refuses_another_runs_files(tmp_path: Path) -> None:
    store = tmp_path / "p0"
    t = {"x": torch.ones(2, 3)}
    for r in (1, 2, 4):
        node_store.save_round(store, r, {"x": torch.full((2, 3), float(r))})
    # The server checkpoints round r - 1 before it sends round r: round 4 and the newest before it stay.
    assert node_store.saved_rounds(store) == [2, 4]
    rnd, own = node_store.restore(store, 3, {"x": (2, 3)}, {"x"})  # resumed from the checkpoint of round 3
    assert rnd == 2 and float(own["x"][0, 0]) == 2.0
    assert node_store.saved_rounds(store) == [2]  # round 4 is trained again
    assert node_store.restore(store, 1, {"x": (2, 3)}, {"x"}) == (0, {})  # had not trained by round 1
    node_store.save_round(store, 1, t)
    with pytest.raises(FedsbError, match="belongs to another run"):
        node_store.restore(store, 1, {"x": (3, 2)}, {"x"})
