"""A Flower node enforces its own DP budget (DESIGN.md 5.1): the server is not trusted to stop in time.

Each node keeps its accountant in ``Context.state``, refuses (with a one-line error reply that the server
logs as a rejected update) a train message for a round outside its schedule or one that would take its
own epsilon past ``dp.epsilon``, and on resume never lowers its own accountant to the server's record.
All through the in-process FakeGrid (real ClientApp handlers, no Ray).
"""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsb.flower.clientapp import STATE_TRAINER
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.flower.wire import MeteredGrid
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import PrivacyLedger, solve_noise_multiplier
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config, tiny_federation

BUDGET = 3.0
SAMPLE = {"dp": {"mode": "sample", "epsilon": BUDGET}, "init": {"source": "federated"}}


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def run_flower(grid: FakeGrid | None = None, **over) -> tuple[FedsbStrategy, FakeGrid]:
    s = FedsbStrategy(tiny_config(**over), FlowerOptions())
    grid = grid or FakeGrid(client_app, s.cfg.federation.clients)
    s.run(grid, context=server_context())
    return s, grid


def node_ledger(grid: FakeGrid, node: int) -> PrivacyLedger:
    return PrivacyLedger.from_state_dict(json.loads(str(grid.contexts[node].state.config_records[STATE_TRAINER]["json"]))["ledger"])


def train_round(s: FedsbStrategy, grid: FakeGrid, rnd: int, only: list[int] | None = None) -> list[Message]:
    """What a server that ignores its own budget or schedule does: send round ``rnd`` to the nodes (or ``only``)."""
    msgs = list(s.configure_train(rnd, None, None, grid))
    if only is not None:
        template = msgs[0]
        msgs = [Message(content=template.content, dst_node_id=n, message_type=template.metadata.message_type) for n in only]
    return list(grid.send_and_receive(msgs))


def test_a_node_asked_for_a_round_beyond_its_plan_refuses_and_stays_within_budget() -> None:
    s, grid = run_flower(**SAMPLE)  # 2 planned rounds, sigma solved so that they spend the whole budget
    before = {p: node_ledger(grid, n).history(p) for p, n in s.node_of.items()}
    replies = train_round(s, grid, 3)  # one round more than planned
    assert len(replies) == 3 and all(r.has_error() for r in replies)
    assert all("refused: round 3 is not one of this node's planned rounds" in r.error.reason for r in replies)
    # the server records the refusals like rejected updates and the run goes on (the round is skipped)
    s.aggregate_train(3, replies)
    assert s.pending_row["skipped"] and [r["client"] for r in s.pending_row["rejected"]] == ["0", "1", "2"]
    assert all("refused" in r["reason"] for r in s.pending_row["rejected"])
    # a planned round asked again (a replay) would overspend: refused by the node's own accountant
    replies = train_round(s, grid, 2)
    assert all(r.has_error() and "dp.epsilon = 3" in r.error.reason for r in replies)
    for p, n in s.node_of.items():
        ledger = node_ledger(grid, n)
        assert ledger.history(p) == before[p]  # nothing trained, nothing spent
        assert ledger.epsilon(p) <= BUDGET * (1 + 1e-9)


def test_a_node_refuses_a_round_it_is_not_scheduled_in() -> None:
    over = {"dp": {"mode": "client", "epsilon": 5.0, "max_grad_norm": 0.05}, "init": {"source": "public"},
            "federation": {"rounds": 2, "fraction": 2 / 3}}
    s, grid = run_flower(**over)
    for p, n in s.node_of.items():  # client-level DP: the node's own record equals the server's, per client
        assert node_ledger(grid, n).epsilon(p) == pytest.approx(s.rows[-1]["epsilon_clients"][str(p)], rel=1e-12)
    idle = next(p for p in range(3) if p not in s.fed.sample_clients(1))
    before = node_ledger(grid, s.node_of[idle]).history(idle)
    (reply,) = train_round(s, grid, 1, only=[s.node_of[idle]])
    assert reply.has_error() and "refused: round 1 is not one of this node's planned rounds" in reply.error.reason
    assert node_ledger(grid, s.node_of[idle]).history(idle) == before


def test_a_run_goes_on_when_a_node_at_its_budget_refuses() -> None:
    over = {"dp": {"mode": "sample", "epsilon": BUDGET}, "init": {"source": "public"}}
    delta = make_dp_trainer(tiny_federation(**over)).ledger.delta
    s = FedsbStrategy(tiny_config(**over), FlowerOptions())
    grid = FakeGrid(client_app, 3)
    s.setup(MeteredGrid(grid))
    # node 0 has spent almost all of its budget since (e.g. in rounds of this run the restarted server lost)
    sigma = solve_noise_multiplier(BUDGET * 0.999, delta, [(1.0, 1)])
    spent = PrivacyLedger("rdp", delta)
    spent.spend(0, sigma, 1.0, 1)
    grid.contexts[grid.nodes[0]].state[STATE_TRAINER] = ConfigRecord({"json": json.dumps({"mode": "sample", "ledger": spent.state_dict()})})
    s.run(grid, context=server_context())  # the server re-sends the setup, then trains rounds 1 and 2
    assert [r["round"] for r in s.rows] == [0, 1, 2]
    for row in s.rows[1:]:
        assert row["clients_accepted"] == 2
        (rej,) = row["rejected"]
        assert rej["client"] == "0" and "refused" in rej["reason"] and "dp.epsilon = 3" in rej["reason"]
    assert node_ledger(grid, grid.nodes[0]).history(0) == spent.history(0)  # the setup did not wipe it


def test_on_resume_a_node_keeps_its_own_longer_accountant() -> None:
    s, grid = run_flower(**SAMPLE)
    own = {p: node_ledger(grid, n).history(p) for p, n in s.node_of.items()}
    # the server (restarted from an older checkpoint, or lying) hands back a shorter record: init only
    for p in s.node_of:
        s.trainer.ledger.histories[str(p)] = own[p][:1]
    s.setup(MeteredGrid(grid), resume=True)
    for p, n in s.node_of.items():
        assert node_ledger(grid, n).history(p) == own[p]
    # so the replayed round 2 is refused: the node's epsilon never exceeds its budget
    replies = train_round(s, grid, 2)
    assert all(r.has_error() and "dp.epsilon" in r.error.reason for r in replies)
    assert all(node_ledger(grid, n).epsilon(p) <= BUDGET * (1 + 1e-9) for p, n in s.node_of.items())
