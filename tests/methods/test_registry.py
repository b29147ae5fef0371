"""Adding a method is one module plus one registry line: a toy method defined and registered in this file
alone runs through the simulator, the Flower app (real ServerApp strategy and ClientApp, in-process grid) and
``fedsb compare`` (spawned workers), with its own communication formula, learning rate and plot style."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from flwr.app import Context, RecordDict

from fedsb.adapters.model import AdaptedModel
from fedsb.cli.compare import CompareSpec, compare
from fedsb.flower.clientapp import app as client_app
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.methods import METHODS, ClientUpdate, Method, ServerState, register_method, unregister_method
from fedsb.methods.base import weighted_mean
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config


class UniformB(Method):
    """Clients train only B (A frozen from the shared seed, as FFA-LoRA); the server takes the plain mean."""

    name = "toy-uniform-b"
    adapter_mode = "ffa"
    exact = True
    additive = True
    summary = "toy: train B, plain mean"
    plot_style: ClassVar[tuple[str, str]] = ("P", "tab:brown")

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * d_out, r * d_out

    @classmethod
    def default_lr(cls, rank: int) -> float:
        return 5e-3

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        return ServerState(state.round + 1, weighted_mean(updates, list(state.adapter), [1 / len(updates)] * len(updates)))

    def upload_names(self, adapted: AdaptedModel) -> list[str]:
        return adapted.trainable_state_names()


if multiprocessing.parent_process() is not None:  # a spawned `fedsb compare` worker importing this plugin module
    register_method(UniformB)


@pytest.fixture(autouse=True)
def toy_registered() -> Iterator[None]:
    """Registered for this module's tests only, so other tests see the builtin registry."""
    register_method(UniformB)
    yield
    unregister_method(UniformB.name)


def uploads_of_round(method: str, round_idx: int, monkeypatch) -> list[dict[str, torch.Tensor]]:
    seen: list[list[ClientUpdate]] = []
    real = METHODS[method].aggregate

    def spy(self, state, updates):
        if state.round == round_idx - 1:
            seen.append([ClientUpdate(u.client_id, {k: v.clone() for k, v in u.payload.items()}, u.num_examples) for u in updates])
        return real(self, state, updates)

    monkeypatch.setattr(METHODS[method], "aggregate", spy)
    return seen  # filled while the run goes


def test_the_toy_runs_in_the_simulator_with_its_own_formula_and_aggregation(monkeypatch) -> None:
    seen = uploads_of_round("toy-uniform-b", 2, monkeypatch)
    result = Simulator(tiny_config(method="toy-uniform-b"), progress=False).run()
    assert result.fed.lr == 5e-3  # the method's own default learning rate
    assert result.state.round == 2 and len(seen[0]) == 3
    mean = {k: sum(u.payload[k] for u in seen[0]) / 3 for k in result.state.adapter}
    assert all(torch.allclose(result.state.adapter[k], mean[k], atol=1e-6) for k in mean)  # the plain mean, not weighted
    dims = [(layer.d_out, layer.d_in) for layer in result.fed.adapted.layers.values()]
    head = sum(p.numel() for p in result.fed.adapted.head_parameters())
    assert result.summary["comm"]["upload_params_per_client_round"] == sum(4 * d_out for d_out, _ in dims) + head
    assert result.rows[-1]["upload_params_per_client"] == result.summary["comm"]["upload_params_per_client_round"]


def test_the_toy_runs_on_the_flower_app_like_the_simulator() -> None:
    s = FedsbStrategy(tiny_config(method="toy-uniform-b"), FlowerOptions())
    s.run(FakeGrid(client_app, s.cfg.federation.clients),
          context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    sim = Simulator(tiny_config(method="toy-uniform-b"), progress=False).run()
    assert s.state is not None and s.state.round == sim.state.round == 2
    assert max(float((s.state.adapter[k] - sim.state.adapter[k]).abs().max()) for k in sim.state.adapter) <= 1e-6


@pytest.mark.slow  # two spawned workers import torch and the test module again
def test_the_toy_runs_in_compare_workers(tmp_path: Path) -> None:
    cfg = tiny_config(out=str(tmp_path / "cmp"), federation={"rounds": 2})
    rows = compare(cfg, CompareSpec(methods=["toy-uniform-b", "ffa-lora"], fedsb_ranks=[4], lora_rank=4, seeds=1,
                                    workers=2), progress=False)
    assert [r["method"] for r in rows] == ["toy-uniform-b", "ffa-lora"]
    toy, ffa = rows
    assert toy["upload_params"] == ffa["upload_params"]  # the same B-only traffic, from the toy's own formula
    summary = json.loads((tmp_path / "cmp" / "runs" / "toy-uniform-b-r4-s0" / "summary.json").read_text())
    assert summary["method"] == "toy-uniform-b"


def test_method_options_are_checked_against_the_method_in_one_line() -> None:
    import pytest as _pytest

    from fedsb.errors import UsageError
    from fedsb.methods import method_options

    assert method_options("ravan", {"heads": 9}).heads == 9  # type: ignore[attr-defined]
    with _pytest.raises(UsageError, match=r"^method_options\.headz: .*method 'ravan' takes: heads"):
        method_options("ravan", {"headz": 4})
    with _pytest.raises(UsageError, match=r"^method_options\.heads: .*takes: none|method 'fed-sb' takes: none"):
        method_options("fed-sb", {"heads": 4})


def test_a_bad_method_option_exits_2_before_any_model_loads(capsys) -> None:
    from fedsb.cli import main

    assert main(["run", "--method", "ravan", "--method_options.selection", "everything", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method_options.selection" in err[0]
