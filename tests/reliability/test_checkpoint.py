"""Checkpoint/restore in process: a run stopped after any round and resumed equals an uninterrupted one."""

from __future__ import annotations

import random

import pytest
import torch

from fedsb.core.client import ClientTrainer, train_client
from fedsb.errors import FedsbError
from fedsb.io.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint, strip_timing
from fedsb.simulation.simulator import Simulator
from tests.reliability._tiny import METHOD_NAMES, tiny_cfg


class NoisyTrainer(ClientTrainer):
    """Default training plus draws from the global torch and python RNGs (like dropout) and a per-client
    counter kept across rounds (like a DP accountant), exposed through the checkpoint hook."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def __call__(self, fed, client, round_idx, step_offset):
        metrics = train_client(fed, client, round_idx, step_offset)
        with torch.no_grad():
            for p in fed.adapted.trainable_parameters():
                p.add_(1e-3 * torch.randn_like(p) * random.random())
        self.steps[str(client)] = self.steps.get(str(client), 0) + 1
        return {**metrics, "noise_draws": float(sum(self.steps.values()))}

    def state_dict(self) -> dict:
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = dict(state["steps"])


class Stop(Exception):
    pass


#: Downloads of a round after a resume: FedEx-LoRA/FLoRA clients start empty and catch up on the base residual.
CATCHUP_FIELDS = ("download_params_per_client", "download_bytes_per_client", "download_bytes_round",
                  "catchup_download_bytes_round", "download_bytes_cum")


def resumed_view(row: dict, method: str) -> dict:
    """A metrics row without timings and, for the methods whose clients catch up after a resume, download sizes."""
    row = strip_timing(row)
    return {k: v for k, v in row.items() if k not in CATCHUP_FIELDS} if method in ("fedex-lora", "flora", "rolora") else row


def final_state(sim: Simulator) -> dict[str, torch.Tensor]:
    return {**sim.fed.adapted.get_state(), **sim.fed.adapted.residual_state()}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_resume_after_each_round_equals_uninterrupted(method, tmp_path):
    cfg = tiny_cfg(method, **{"federation": {"rounds": 3, "fraction": 0.67}})
    random.seed(0)  # the simulator seeds torch; this trainer also draws from python's global RNG
    ref = Simulator(cfg, trainer=NoisyTrainer(), progress=False)
    ref_result = ref.run()
    for stop_after in (0, 2):
        run_dir = tmp_path / f"stop{stop_after}"
        run_dir.mkdir()
        random.seed(0)
        first = Simulator(tiny_cfg(method, **{"federation": {"rounds": 3, "fraction": 0.67}}), trainer=NoisyTrainer(), progress=False)

        def on_round(row, sim=first, stop_after=stop_after, run_dir=run_dir):
            save_checkpoint(run_dir, sim)
            if row["round"] == stop_after:
                raise Stop

        first.on_round = on_round
        with pytest.raises(Stop):
            first.run()
        torch.manual_seed(1234)  # a resumed process starts from unrelated RNG states
        random.seed(99)
        ckpt = load_checkpoint(run_dir)
        assert ckpt.round == stop_after
        trainer = NoisyTrainer()
        second = Simulator(tiny_cfg(method, **{"federation": {"rounds": 3, "fraction": 0.67}}), trainer=trainer, progress=False)
        start = restore_checkpoint(second, ckpt)
        assert start == stop_after + 1
        assert trainer.steps == ckpt.meta["trainer_state"]["steps"]
        result = second.run(start_round=start)
        assert [resumed_view(r, method) for r in result.rows] == [resumed_view(r, method) for r in ref_result.rows]
        # a resume restarts the federation's clients (fedsb.simulation.simulator): what they must be sent again is extra
        assert result.comm.upload_bytes == ref_result.comm.upload_bytes
        assert result.comm.download_bytes >= ref_result.comm.download_bytes
        got, want = final_state(second), final_state(ref)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k
        for k in ref.state.adapter:
            assert torch.equal(second.state.adapter[k], ref.state.adapter[k])


def test_checkpoint_rejects_a_mismatched_model(tmp_path):
    sim = Simulator(tiny_cfg("fed-sb"), progress=False)
    sim.initialise()
    save_checkpoint(tmp_path, sim)
    other = Simulator(tiny_cfg("fed-sb", adapter={"rank": 2}), progress=False)
    with pytest.raises(FedsbError, match="does not (match|fit)"):
        restore_checkpoint(other, load_checkpoint(tmp_path))


def test_corrupt_and_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(FedsbError, match="missing"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FedsbError, match="not a valid checkpoint"):
        load_checkpoint(tmp_path)
