"""The Flower strategy + ClientApp against the in-process simulator, over an in-process grid (no Ray, no sockets).

Exactness, catch-up of missed base-weight increments, bf16 on the wire, wire vs analytical bytes, SecAgg+,
refusals, and resume after a ServerApp crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.errors import FedsbError
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.serverapp import serve
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid, crash_on_train_round
from tests.helpers import tiny_config


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def run_flower(method: str, opts: FlowerOptions | None = None, **over) -> tuple[FedsbStrategy, FakeGrid]:
    s = FedsbStrategy(tiny_config(method=method, **over), opts or FlowerOptions())
    grid = FakeGrid(client_app, s.cfg.federation.clients)
    s.run(grid, context=server_context())
    return s, grid


def run_sim(method: str, wire: str = "float32", **over):
    return Simulator(tiny_config(method=method, **over), progress=False, wire_dtype=wire).run()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max([float((a[k] - b[k]).abs().max()) for k in a] or [0.0])


@pytest.mark.parametrize("method", ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora", "fedsvd", "rolora", "fedsa-lora", "ravan"])
def test_same_result_as_the_simulator(method: str) -> None:
    s, _ = run_flower(method)
    sim = run_sim(method)
    assert s.state is not None and s.state.round == sim.state.round == 2
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6
    assert max_diff(s.fed.adapted.get_state(), sim.fed.adapted.get_state()) <= 1e-6
    assert max_diff(s.fed.adapted.residual_state(), sim.fed.adapted.residual_state()) <= 1e-6
    assert s.rows[-1]["accuracy"] == pytest.approx(sim.rows[-1]["accuracy"])


@pytest.mark.parametrize("selection", ["random", "gradient"])
def test_ravan_head_subsets_and_fedsvd_with_partial_participation_equal_the_simulator(selection: str) -> None:
    """Options the default-option comparison above leaves out: RAVAN clients training 1 or 2 of 4 heads (chosen at
    random or by gradient score), and FedSVD's SVD after a round in which only some clients took part."""
    over = {"adapter": {"rank": 4}, "method_options": {"selection": selection, "head_fractions": [0.25, 0.5]},
            "federation": {"rounds": 3, "fraction": 0.67}}
    s, _ = run_flower("ravan", **over)
    sim = run_sim("ravan", **over)
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6
    assert s.comm.upload_params == sim.comm.upload_params < 3 * 2 * sum(t.numel() for t in sim.state.adapter.values())
    if selection == "random":
        part = {"federation": {"rounds": 3, "fraction": 0.67}}
        f, _ = run_flower("fedsvd", **part)
        assert max_diff(f.state.adapter, run_sim("fedsvd", **part).state.adapter) <= 1e-6


@pytest.mark.parametrize("method", ["fedex-lora", "flora"])
def test_clients_that_missed_rounds_catch_up(method: str) -> None:
    over = {"federation": {"fraction": 0.5, "rounds": 4}}
    s, grid = run_flower(method, **over)
    sim = run_sim(method, **over)
    synced = [m for m in grid.sent if m.metadata.message_type == "train" and "sync" in m.content.array_records]
    assert synced, "with fraction 0.5 some node must have missed a round and been sent the absolute residual"
    assert max_diff(s.fed.adapted.residual_state(), sim.fed.adapted.residual_state()) <= 1e-6
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6


def test_wire_payload_matches_the_analytical_count() -> None:
    s, _ = run_flower("fed-sb")
    for row in s.rows[1:]:
        k = row["clients_accepted"]
        for d in ("upload", "download"):
            analytic = row[f"{d}_bytes_per_client"] * k
            assert abs(row[f"wire_{d}_payload_bytes"] - analytic) <= 0.01 * analytic
            assert row[f"wire_{d}_framing_bytes"] > 0
            assert row[f"wire_{d}_messages"] == k
    setup = s.rows[0]
    # the LoRA-SB init upload and the B/A broadcast are real rounds, counted too
    assert setup["wire_upload_payload_bytes"] == s.one_time["init_upload_bytes_per_client"] * 3
    assert setup["wire_download_payload_bytes"] == s.one_time["broadcast_bytes_per_client"] * 3


def test_bf16_wire_halves_bytes_and_matches_the_simulator() -> None:
    s, _ = run_flower("fed-sb", FlowerOptions(wire_dtype="bfloat16"))
    f32, _ = run_flower("fed-sb")
    sim = run_sim("fed-sb", wire="bfloat16")
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6
    assert s.rows[1]["wire_upload_payload_bytes"] * 2 == f32.rows[1]["wire_upload_payload_bytes"]


@pytest.mark.parametrize("method", ["fed-sb", "ffa-lora"])
def test_secagg_equals_plain_averaging(method: str) -> None:
    secure, _ = run_flower(method, FlowerOptions(secagg=True), federation={"rounds": 1})
    plain, _ = run_flower(method, federation={"rounds": 1})
    # one quantisation step of SecAgg+ is 2 * 8 / 2**24 ~ 1e-6
    assert max_diff(secure.state.adapter, plain.state.adapter) <= 5e-6
    row = secure.rows[1]
    assert row["secagg_clients"] == 3 and row["wire_upload_payload_bytes"] > 0


@pytest.mark.parametrize("method", ["fedex-lora", "flora"])
def test_secagg_refused_where_the_server_needs_individual_updates(method: str) -> None:
    with pytest.raises(FedsbError, match="cannot use secure aggregation"):
        FedsbStrategy(tiny_config(method=method), FlowerOptions(secagg=True))


def test_resume_after_a_server_crash(tmp_path: Path) -> None:
    whole = tiny_config(method="fedex-lora", out=str(tmp_path / "whole"), federation={"rounds": 3})
    ref = serve(FakeGrid(client_app, 3), server_context(), whole, FlowerOptions())
    cfg = tiny_config(method="fedex-lora", out=str(tmp_path / "crashed"), federation={"rounds": 3})
    grid = FakeGrid(client_app, 3)
    crash_on_train_round(grid, 3)
    with pytest.raises(KeyboardInterrupt):
        serve(grid, server_context(), cfg, FlowerOptions())
    assert (tmp_path / "crashed" / "checkpoint.safetensors").is_file()
    # a new run: fresh node state, so the server re-sends setup, B/A (none here) and the absolute residual
    resumed = serve(FakeGrid(client_app, 3), server_context(), cfg, FlowerOptions(), resume=True)
    assert resumed.state.round == ref.state.round == 3
    assert max_diff(resumed.state.adapter, ref.state.adapter) <= 1e-6
    assert max_diff(resumed.fed.adapted.residual_state(), ref.fed.adapted.residual_state()) <= 1e-6
    assert [r["round"] for r in resumed.rows] == [0, 1, 2, 3]


def test_client_side_evaluation() -> None:
    s, grid = run_flower("fed-sb", FlowerOptions(client_eval=True), federation={"rounds": 1})
    assert any(m.metadata.message_type == "evaluate" for m in grid.sent)
    assert 0.0 <= s.rows[-1]["client_accuracy"] <= 1.0


def test_deployment_nodes_train_on_their_own_data_file() -> None:
    data = Path(__file__).resolve().parents[2] / "src" / "fedsb" / "data" / "bigbench" / "intent_recognition" / "task.json"
    cfg = tiny_config(federation={"clients": 2, "rounds": 1})
    s = FedsbStrategy(cfg, FlowerOptions())
    grid = FakeGrid(client_app, 2, node_config=lambda i, k: {"partition-id": i, "num-partitions": k, "data-path": str(data)})
    s.run(grid, context=server_context())
    # each silo's whole file is its shard: both report the full training split, not a partition of it
    full = len(s.fed.task.train)
    assert s.examples == {0: full, 1: full}
    assert s.rows[-1]["clients_accepted"] == 2
