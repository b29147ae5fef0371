"""A SuperNode decides what it trains: a server config that names another model or data than the node's
``node_config`` pins is refused, before anything the server names is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

import fedsb.flower.clientapp as clientapp
from fedsb.errors import FedsbError
from fedsb.flower.deploy import LocalDeployment
from fedsb.flower.strategy import SETUP
from tests.flower.fakegrid import allow_messages
from tests.helpers import tiny_config

DATA = Path(__file__).resolve().parents[2] / "src" / "fedsb" / "data" / "bigbench" / "intent_recognition" / "task.json"


def setup_message(**over: Any) -> Message:
    """The server's setup message (as FedsbStrategy builds it) for a tiny config with ``over`` applied."""
    allow_messages()
    cfg = tiny_config(**over)
    content = {"fedsb-config": json.dumps(cfg.to_dict()), "wire-dtype": "float32", "want-init": False}
    return Message(content=RecordDict({"config": ConfigRecord(content)}), dst_node_id=101, message_type=SETUP)


def node(**pins: str) -> Context:
    return Context(run_id=1, node_id=101, node_config={"partition-id": 0, "num-partitions": 3, **pins},
                   state=RecordDict(), run_config={})


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Fail the test if the node builds a federation (loads the server-named model or data)."""
    def refuse(cfg):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the node loaded {cfg.model.name} / {cfg.task.path or cfg.task.name}")

    monkeypatch.setattr(clientapp, "federation_for", refuse)


def test_node_pinned_to_a_model_refuses_a_server_naming_another(nothing_loaded) -> None:
    with pytest.raises(FedsbError, match=r"names model 'tiny-bert' but this SuperNode is pinned to 'tiny-llama'"):
        clientapp.setup(setup_message(model="tiny-bert"), node(**{"model-name": "tiny-llama"}))


def test_node_with_its_own_data_file_refuses_a_server_naming_another(nothing_loaded, tmp_path: Path) -> None:
    with pytest.raises(FedsbError, match="trains only on its data-path"):
        clientapp.setup(setup_message(task={"path": str(tmp_path / "server-chosen.jsonl")}), node(**{"data-path": str(DATA)}))


def test_node_pinned_to_a_task_refuses_a_server_naming_another(nothing_loaded) -> None:
    with pytest.raises(FedsbError, match="pinned to 'intent_recognition'"):
        clientapp.setup(setup_message(task={"name": "arithmetic_2_digit_addition"}), node(task="intent_recognition"))
    with pytest.raises(FedsbError, match="node config task"):
        clientapp.setup(setup_message(task={"path": str(DATA)}), node(task="intent_recognition"))


def test_refusal_also_guards_later_messages(nothing_loaded) -> None:
    """A train message after a refused setup is refused too (every message re-checks the stored config)."""
    ctx = node(**{"model-name": "tiny-llama"})
    with pytest.raises(FedsbError):
        clientapp.setup(setup_message(), ctx)
    with pytest.raises(FedsbError, match="pinned to 'tiny-llama'"):
        clientapp.load_node(ctx)


def test_matching_pins_are_accepted() -> None:
    reply = clientapp.setup(setup_message(federation={"clients": 3}),
                            node(**{"model-name": "tiny-bert", "task": "intent_recognition"}))
    assert reply.content["metrics"]["partition-id"] == 0
    same_file = clientapp.setup(setup_message(task={"path": str(DATA)}), node(**{"data-path": str(DATA)}))
    assert same_file.content["metrics"]["num-examples"] > 0


def test_local_deployment_pins_model_and_task_on_every_supernode(tmp_path: Path) -> None:
    dep = LocalDeployment(2, tmp_path, pins={"model-name": "tiny-bert", "task": "intent_recognition"})
    cfgs = [dep.node_config(i) for i in range(2)]
    assert cfgs == [f'partition-id={i} num-partitions=2 state-dir="{tmp_path / f"supernode{i}" / "state"}" '
                    'model-name="tiny-bert" task="intent_recognition"' for i in range(2)]
