"""Device placement (DESIGN.md 5.3) without a GPU: every path runs with the model on an emulated accelerator.

The emulated device (``tests/emulated_device.py``) computes for real on the CPU but raises CUDA's errors
when a CPU tensor meets a device tensor or a CPU generator draws for the device. A run that passes here
creates every accumulator, noise draw, rotation and generator on the model's device, and gives the same
numbers as on the CPU. ``benchmarks/gpu_smoke.py`` runs the same paths on a real GPU.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict

import fedsb.flower.clientapp as clientapp
from fedsb.adapters.lora_sb_init import truncated_svd
from fedsb.core.federation import build_federation, client_init_message
from fedsb.devices import client_rng, client_round_seed, seeded_rng
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.models.load import load_model
from fedsb.simulation.simulator import Simulator
from tests.emulated_device import EMULATED, Emulated, emulated_device, place_federation, to_emulated
from tests.flower.fakegrid import FakeGrid
from tests.helpers import tiny_config


def run(method: str, emulated: bool, **over):  # type: ignore[no-untyped-def]
    cfg = tiny_config(method=method, **{"federation": {"rounds": 2}, **over})
    fed = build_federation(cfg)
    trainer = {}
    if cfg.dp.mode != "off":
        from fedsb.privacy import make_dp_trainer

        trainer["trainer"] = make_dp_trainer(fed)
    if not emulated:
        return Simulator(cfg, fed=fed, progress=False, **trainer).run()
    place_federation(fed)
    with emulated_device():
        result = Simulator(cfg, fed=fed, progress=False, **trainer).run()
    assert all(isinstance(p, Emulated) for p in fed.adapted.parameters()), "the model stayed on the emulated device"
    return result


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max([float((a[k] - b[k]).abs().max()) for k in a] or [0.0])


# --- the emulated device refuses what CUDA refuses ---------------------------------------------------------


def test_the_emulated_device_raises_on_mixing_and_on_cpu_generators() -> None:
    with emulated_device():
        x = torch.ones(3, 3, device=EMULATED)
        assert x.device == EMULATED and float((x @ x).sum()) == 27.0  # it computes
        for mix in (lambda: torch.zeros(3, 3).add_(x), lambda: x.add_(torch.ones(3, 3)), lambda: torch.ones(3, 3) @ x):
            with pytest.raises(RuntimeError, match="same device"):
                mix()
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.normal(0.0, 1.0, size=(3,), generator=torch.Generator(), device=EMULATED)
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.rand(3, generator=torch.Generator(device=EMULATED))
        torch.normal(0.0, 1.0, size=(3,), generator=torch.Generator(device=EMULATED), device=EMULATED)
        assert torch.equal(x.cpu() + torch.ones(3, 3), torch.full((3, 3), 2.0))  # moves and 0-dim scalars are fine
        assert (x * torch.tensor(2.0)).device == EMULATED
        lin = to_emulated(torch.nn.Linear(3, 2))
        with pytest.raises(RuntimeError, match="same device"):
            lin(torch.ones(1, 3))


# --- seeded randomness -----------------------------------------------------------------------------------


def test_seeded_rng_restores_the_cpu_stream_and_never_reseeds_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))  # what torch.manual_seed reaches
    torch.manual_seed(5)
    calls.clear()
    before = torch.get_rng_state()
    with seeded_rng(3):
        a = torch.rand(4)
    with seeded_rng(3):
        assert torch.equal(torch.rand(4), a)
    g = torch.Generator().manual_seed(1)
    truncated_svd(torch.randn(40, 30, generator=g), 4, "lowrank", oversample=2, seed=9)
    load_model("tiny-bert", "classification", seed=4)
    with client_rng(0, 1, 2, "cpu"):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    assert calls == [], "the global CUDA generators were reseeded"
    assert len({client_round_seed(0, r, c) for r in range(1, 4) for c in range(5)}) == 15


# --- every path on the emulated accelerator ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora"])
def test_every_method_runs_on_the_device_and_matches_the_cpu(method: str) -> None:
    dev, cpu = run(method, True), run(method, False)
    assert dev.state.round == cpu.state.round == 2
    assert max_diff(dev.state.adapter, cpu.state.adapter) <= 1e-5
    assert max_diff(dev.fed.adapted.residual_state(), cpu.fed.adapted.residual_state()) <= 1e-5
    assert dev.rows[-1]["accuracy"] == pytest.approx(cpu.rows[-1]["accuracy"])


@pytest.mark.parametrize("eval_mode", ["likelihood", "generate"])
def test_a_causal_lm_with_a_bf16_base_runs_on_the_device_and_matches_the_cpu(eval_mode: str) -> None:
    """The paper presets' path: a decoder on the device, bfloat16 base weights, float32 adapters."""
    from fedsb.config import from_dict, merge, validate

    results = []
    for emulated in (True, False):
        cfg = validate(from_dict(merge(tiny_config("tiny-llama", method="fedex-lora").to_dict(), {
            "model": {"kind": "causal-lm", "dtype": "bfloat16"}, "federation": {"rounds": 1}, "task": {"max_test_examples": 4},
            "eval": {"mode": eval_mode}})))
        fed = build_federation(cfg)
        if emulated:
            place_federation(fed)
            with emulated_device():
                results.append(Simulator(cfg, fed=fed, progress=False).run())
        else:
            results.append(Simulator(cfg, fed=fed, progress=False).run())
    dev, cpu = results
    assert next(iter(dev.fed.adapted.layers.values())).base.weight.dtype == torch.bfloat16
    # Attention runs torch's decomposed SDPA under the emulation (differences of ~1e-9 per layer), which the
    # bf16 base magnifies through a round of training: close, not equal.
    assert max_diff(dev.state.adapter, cpu.state.adapter) <= 1e-2
    if eval_mode == "likelihood":
        assert dev.rows[-1]["loss"] == pytest.approx(cpu.rows[-1]["loss"], rel=1e-3)
    assert 0.0 <= dev.rows[-1]["accuracy"] <= 1.0


@pytest.mark.parametrize("init", [{"source": "federated"}, {"source": "federated-sign"}, {"source": "public"},
                                  {"source": "federated-lowrank", "lowrank_bits": 32},
                                  {"source": "federated-lowrank", "lowrank_bits": 16},
                                  {"source": "federated-lowrank", "lowrank_bits": 4}])
def test_every_init_source_runs_on_the_device_and_matches_the_cpu(init: dict) -> None:
    over = {"init": {**init, "samples": 8, "batch_size": 8}, "federation": {"rounds": 1}}
    dev, cpu = run("fed-sb", True, **over), run("fed-sb", False, **over)
    # B and A come from the init; the SVD sketch is drawn on the device, so compare what they span
    from fedsb.adapters.subspace import adapter_factors, init_agreement

    agree = init_agreement(adapter_factors(cpu.fed.adapted), adapter_factors(dev.fed.adapted))
    assert agree["b_cos2"] > 0.999 and agree["a_cos2"] > 0.999
    assert dev.rows[-1]["accuracy"] == pytest.approx(cpu.rows[-1]["accuracy"])
    if init["source"] != "public":  # what a client uploads is a CPU tensor, whatever its model's device
        with emulated_device():
            message, _ = client_init_message(dev.fed, 0)
        assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in message.values())


@pytest.mark.parametrize("method", ["fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora"])
def test_aggregation_runs_on_the_device_of_the_updates(method: str) -> None:
    """A server that aggregates on an accelerator: accumulators and residuals follow the updates' device."""
    fed = build_federation(tiny_config(method=method))
    if fed.method.adapter_mode != "lora-sb":
        fed.adapted.init_lora(1)
    state = fed.method.initial_state(fed.adapted)
    g = torch.Generator().manual_seed(0)
    names = fed.method.upload_names(fed.adapted)
    shapes = fed.adapted.shapes()
    updates = [ClientUpdate(str(c), {n: torch.randn(shapes[n], generator=g) for n in names}, 10 + c) for c in range(3)]
    on_cpu = fed.method.aggregate(state, updates)
    move = lambda d: {k: Emulated(v) for k, v in d.items()}  # noqa: E731
    with emulated_device():
        dev_state = ServerState(state.round, move(state.adapter), move(state.pending))
        dev_updates = [ClientUpdate(u.client_id, move(u.payload), u.num_examples) for u in updates]
        results = [fed.method.aggregate(dev_state, dev_updates)]
    for res in results:
        for part, ref in ((res.adapter, on_cpu.adapter), (res.pending, on_cpu.pending)):
            assert set(part) == set(ref) and all(isinstance(t, Emulated) for t in part.values())
            assert max_diff({k: v.cpu() for k, v in part.items()}, ref) <= 1e-6


@pytest.mark.parametrize(("method", "dp"), [("fed-sb", "sample"), ("fedex-lora", "sample"), ("fed-sb", "client")])
def test_dp_runs_on_the_device(method: str, dp: str) -> None:
    over = {"dp": {"mode": dp, "noise_multiplier": 0.5, "max_grad_norm": 1.0}, "init": {"source": "federated"}}
    result = run(method, True, **over)
    assert result.state.round == 2 and result.summary["privacy"]["mode"] == dp
    assert all(bool(torch.isfinite(t).all()) for t in result.state.adapter.values())


def test_flower_nodes_and_server_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """FedEx-LoRA with nodes missing rounds: decoded CPU arrays meet device models (residual sync, catch-up)."""
    monkeypatch.setattr(clientapp, "_CACHE", {})
    monkeypatch.setattr(clientapp, "_DP", {})
    monkeypatch.setattr(clientapp, "build_federation", lambda cfg: place_federation(build_federation(cfg)))
    over = {"federation": {"fraction": 0.5, "rounds": 3}}
    cfg = tiny_config(method="fedex-lora", **over)
    strategy = FedsbStrategy(cfg, FlowerOptions(), fed=place_federation(build_federation(cfg)))
    with emulated_device():
        strategy.run(FakeGrid(clientapp.app, 3), context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                                  run_config={}))
    sim = run("fedex-lora", False, **over)
    assert strategy.state is not None and strategy.state.round == 3
    assert max_diff(strategy.state.adapter, sim.state.adapter) <= 1e-5
    assert max_diff(strategy.fed.adapted.residual_state(), sim.fed.adapted.residual_state()) <= 1e-5


def test_export_and_checkpoint_from_the_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedsb.io.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
    from fedsb.io.export import export_peft, merged_model

    cfg = tiny_config(method="fedex-lora", federation={"rounds": 1})
    fed = place_federation(build_federation(cfg))
    with emulated_device():
        sim = Simulator(cfg, fed=fed, progress=False)
        sim.run()
        export_peft(fed.adapted, tmp_path / "adapter", "tiny-bert", "SEQ_CLS")
        save_checkpoint(tmp_path, sim)
        fresh = Simulator(cfg, fed=place_federation(build_federation(cfg)), progress=False)
        restore_checkpoint(fresh, load_checkpoint(tmp_path))
        assert max_diff(fresh.fed.adapted.residual_state(), fed.adapted.residual_state()) == 0.0
        merged_model(fed.adapted)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
