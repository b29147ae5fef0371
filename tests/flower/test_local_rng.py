"""Dropout over Flower: local training seeds the global RNG per (seed, round, client), so a model with dropout
trains the same in the simulator, on Flower nodes (in-process grid) and after a ServerApp crash and resume.

Real nodes are separate processes, each with its own global RNG; :class:`ProcessPerNodeGrid` gives every
node of the in-process grid its own RNG state, so a draw that depends on what else ran in the process shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

import fedsb.flower.clientapp as clientapp
import fedsb.models.load
from fedsb.flower.serverapp import serve
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.simulation.simulator import Simulator
from tests.flower.fakegrid import FakeGrid, crash_on_train_round
from tests.helpers import tiny_config

DROPOUT = 0.2


@pytest.fixture
def dropout_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny-bert with dropout in the embeddings, attention and hidden layers; node model caches emptied."""
    real = fedsb.models.load.tiny_config

    def with_dropout(name: str, vocab_size: int, num_labels: int):  # type: ignore[no-untyped-def]
        conf = real(name, vocab_size, num_labels)
        conf.hidden_dropout_prob = conf.attention_probs_dropout_prob = DROPOUT
        return conf

    monkeypatch.setattr(fedsb.models.load, "tiny_config", with_dropout)
    monkeypatch.setattr(clientapp, "_CACHE", {})  # a dropout-free model of the same config must not be reused
    monkeypatch.setattr(clientapp, "_DP", {})


class ProcessPerNodeGrid(FakeGrid):
    """Each node keeps its own global CPU RNG state, starting from a fresh process's, as separate processes do."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.rng = {n: torch.Generator().get_state() for n in self.nodes}

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        out = []
        for m in messages:
            node, server = m.metadata.dst_node_id, torch.get_rng_state()
            torch.set_rng_state(self.rng[node])
            try:
                out.extend(super().send_and_receive([m], timeout=timeout))
            finally:
                self.rng[node] = torch.get_rng_state()
                torch.set_rng_state(server)
        return out


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b) and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("method", ["fed-sb", "fedex-lora"])
def test_dropout_model_same_in_the_simulator_and_over_flower(method: str, dropout_model: None) -> None:
    over = {"federation": {"rounds": 2}}
    sim = Simulator(tiny_config(method=method, **over), progress=False).run()
    assert sim.fed.loaded.model.config.hidden_dropout_prob == DROPOUT
    s = FedsbStrategy(tiny_config(method=method, **over), FlowerOptions())
    s.run(ProcessPerNodeGrid(clientapp.app, 3), context=server_context())
    assert s.state is not None and s.state.round == sim.state.round == 2
    assert max_diff(s.state.adapter, sim.state.adapter) <= 1e-6
    assert max_diff(s.fed.adapted.get_state(), sim.fed.adapted.get_state()) <= 1e-6
    if method == "fedex-lora":
        assert max_diff(s.fed.adapted.residual_state(), sim.fed.adapted.residual_state()) <= 1e-6


def test_dropout_model_resumes_bit_identically_over_flower(tmp_path: Path, dropout_model: None) -> None:
    whole = tiny_config(method="fed-sb", out=str(tmp_path / "whole"), federation={"rounds": 3})
    ref = serve(ProcessPerNodeGrid(clientapp.app, 3), server_context(), whole, FlowerOptions())
    cfg = tiny_config(method="fed-sb", out=str(tmp_path / "crashed"), federation={"rounds": 3})
    grid = ProcessPerNodeGrid(clientapp.app, 3)
    crash_on_train_round(grid, 3)
    with pytest.raises(KeyboardInterrupt):
        serve(grid, server_context(), cfg, FlowerOptions())
    resumed = serve(ProcessPerNodeGrid(clientapp.app, 3), server_context(), cfg, FlowerOptions(), resume=True)
    assert resumed.state.round == ref.state.round == 3
    for k, v in ref.state.adapter.items():
        assert torch.equal(resumed.state.adapter[k], v), k
