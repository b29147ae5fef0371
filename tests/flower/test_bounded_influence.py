"""Bounded client influence over Flower (DESIGN §5.2): the strategy checks every round's example count against
the node's setup declaration, caps declared counts, and clips changes; rows report it."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedsb.flower.clientapp import app as client_app
from fedsb.flower.records import from_record, to_record
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config

HOSTILE = 102  # the second node (partition 1)


def hostile_app(setup_factor: int, train_factor: int, upload_scale: float):
    """Node HOSTILE multiplies its declared counts (setup / every round) and its upload."""

    def app(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        if ctx.node_id != HOSTILE or reply.has_error():
            return reply
        kind = msg.metadata.message_type
        if kind in ("query.setup", "train"):
            m = reply.content["metrics"]
            m["num-examples"] = int(m["num-examples"]) * (setup_factor if kind == "query.setup" else train_factor)
        if kind == "train" and upload_scale != 1.0:
            up = from_record(reply.content["arrays"])
            reply.content["arrays"] = to_record({k: upload_scale * v for k, v in up.items()})
        return reply

    return app


def run(method: str, app) -> tuple[FedsbStrategy, dict[str, torch.Tensor]]:
    """The finished strategy and the server model's adapter state at round 0 (after the init)."""
    initial: dict[str, torch.Tensor] = {}

    def on_round(row: dict) -> None:
        if row["round"] == 0:
            initial.update(model(s))

    s = FedsbStrategy(tiny_config(method=method, federation={"partition": "iid"}), FlowerOptions(), on_round=on_round)
    s.run(FakeGrid(app, s.cfg.federation.clients), context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                                    run_config={}))
    return s, initial


def model(s: FedsbStrategy) -> dict[str, torch.Tensor]:
    """The server's global model: every layer's W - W0 (residual + adapter product) and the head."""
    a = s.fed.adapted
    return {**a.delta_weights(), **a.get_state(a.head_state_names())}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5


@pytest.mark.parametrize("method", ["fed-sb", "fedex-lora"])
def test_a_node_declaring_100x_and_scaling_its_upload_is_capped_and_clipped(method: str) -> None:
    honest, initial = run(method, client_app)
    s, _ = run(method, hostile_app(100, 100, 1e3))
    assert s.validator.declared["1"] == 100 * honest.validator.declared["1"]
    for row in s.rows[1:]:
        assert row["rejected"] == [] and row["clients_accepted"] == 3
        assert row["capped"] == [{"client": "1", "examples": s.validator.declared["1"], "cap": 2 * honest.validator.declared["0"]}]
        assert [c["client"] for c in row["clipped"]] == ["1"]
    # Per round the hostile node moves the aggregate by at most (weight 1/2) x (2 + 1) median changes; over two
    # rounds pushing the same way that is about 3 medians, against about 2 for the honest run's own change
    # (unbounded, the 1e3-scaled uploads would move it about 1000x as far).
    honest_change = distance(model(honest), initial)
    assert distance(model(s), model(honest)) < 2.5 * honest_change, (distance(model(s), model(honest)), honest_change)


def test_a_round_count_other_than_the_setup_declaration_is_rejected() -> None:
    s, _ = run("fed-sb", hostile_app(1, 2, 1.0))
    for row in s.rows[1:]:
        assert row["clients_accepted"] == 2
        assert [r["client"] for r in row["rejected"]] == ["1"]
        assert "declared at setup" in row["rejected"][0]["reason"]
