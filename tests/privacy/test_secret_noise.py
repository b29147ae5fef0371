"""DP noise against a curious server (DESIGN.md section 5.1, "Secret randomness").

The server chooses the run's seed and sends the config to every node. Each attack below rebuilds the
randomness the way seed-derived code draws it (the seed formula fedsb used before secret noise) and
subtracts it from what the server sees. With ``dp.reproducible_noise = true`` the attack succeeds (the
mode is labelled "not private"); by default the remainder is as large as the noise itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from fedsb.errors import UsageError
from fedsb.flower.clientapp import STATE_META, load_node
from fedsb.flower.records import dumps
from fedsb.flower.strategy import FedsbStrategy, FlowerOptions
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.init_dp import poisson_examples, private_gradient_sums
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config, tiny_federation

NOT_PRIVATE = "not private: noise derived from the config seed"


def seed_generator(seed: int, *parts: int) -> torch.Generator:
    """The attacker's rebuild: the config seed mixed with a use's public indices (fedsb's old derivation)."""
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def repro(reproducible: bool) -> dict[str, bool]:
    """The opt-in key only where it is set, so the default runs the same config as before the key existed."""
    return {"reproducible_noise": True} if reproducible else {}


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.double().flatten() for t in tensors.values()])


def fit_residual(observed: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``observed`` minus its best multiple of the rebuilt standard-normal draws ``z`` (the scale is public)."""
    return observed - (observed @ z) / (z @ z) * z


# --- sample-level: the privatised init message ----------------------------------------------------------
@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_curious_server_cannot_subtract_the_init_noise(reproducible: bool) -> None:
    sigma, clip = 2.0, 0.01
    fed = tiny_federation(dp={"mode": "sample", "noise_multiplier": sigma, "max_grad_norm": clip, **repro(reproducible)},
                          init={"source": "federated"})
    trainer = make_dp_trainer(fed)
    upload, _ = trainer.init_message(fed, 0)  # what the server receives from client 0
    # The server rebuilds client 0's Poisson draw and noise from the config; the test (as an oracle holding
    # the data) computes the clean clipped sum of that draw.
    g = seed_generator(fed.cfg.seed, 2, 0)
    chosen = poisson_examples(fed.shards[0], trainer.plans["0"].init_sample_rate, g)
    clean = private_gradient_sums(fed.adapted, fed.objective, chosen, fed.cfg.init.batch_size, clip, 0.0, g)
    noise = {k: torch.normal(0.0, sigma * clip, size=t.shape, generator=g) for k, t in clean.items()}
    residual = flat(upload) - flat(clean) - flat(noise)
    if reproducible:
        assert float(residual.abs().max()) < 1e-5  # the attack is exact: this mode is not private
    else:
        assert float(residual.std()) > 0.5 * sigma * clip  # the remainder is noise-sized


# --- sample-level: DP-SGD steps (noise and batch indices) ------------------------------------------------
def trained(fed, trainer, start: dict[str, torch.Tensor]) -> torch.Tensor:
    fed.adapted.set_state(start)
    trainer(fed, 0, 1, 0)  # client 0, round 1
    return flat(fed.adapted.get_state())


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_curious_server_cannot_replay_dp_sgd(reproducible: bool) -> None:
    fed = tiny_federation(dp={"mode": "sample", "noise_multiplier": 5.0, **repro(reproducible)}, init={"source": "public"})
    trainer = make_dp_trainer(fed)
    Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False).initialise()
    start = {k: v.clone() for k, v in fed.adapted.get_state().items()}
    upload = trained(fed, trainer, start)
    # Replay with the seed-derived generators (the data given to the replay, a stronger attacker than the
    # server): with known noise and batches it reproduces the upload, exposing the clean gradients.
    trainer.generator = lambda *parts, device="cpu": seed_generator(fed.cfg.seed, *parts)  # type: ignore[method-assign]
    rebuilt = trained(fed, trainer, start)
    trainer.plans["0"].noise_multiplier = 0.0
    clean = trained(fed, trainer, start)  # the same batches without noise: the noise's effect on the update
    noise_size = float((rebuilt - clean).norm())
    assert noise_size > 0
    residual = float((upload - rebuilt).norm())
    if reproducible:
        assert residual == 0.0
    else:
        assert residual > 0.5 * noise_size


# --- client-level: the server's noise on the aggregate and on the init -----------------------------------
def client_level(reproducible: bool, sigma: float = 1.0):
    fed = tiny_federation(dp={"mode": "client", "noise_multiplier": sigma, "max_grad_norm": 1.0, **repro(reproducible)},
                          init={"source": "public"})
    return fed, make_dp_trainer(fed)


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_released_aggregate_keeps_its_noise_from_anyone_with_the_config(reproducible: bool) -> None:
    fed, trainer = client_level(reproducible)
    gen = torch.Generator().manual_seed(1)
    prev = {"w": torch.zeros(2000)}
    ups = [ClientUpdate(str(i), {"w": 0.01 * torch.randn(2000, generator=gen)}, 10) for i in range(3)]
    out = fed.method.aggregate(ServerState(0, prev), ups)
    m = trainer.expected_clients
    clean = sum(u.payload["w"].double() for u in ups) / m
    z = torch.normal(0.0, 1.0, size=(2000,), generator=seed_generator(fed.cfg.seed, 3, 1), dtype=torch.float64)
    residual = fit_residual(out.adapter["w"].double() - clean, z)
    noise_std = fed.cfg.dp.noise_multiplier * 1.0 / m  # sigma C / m on the mean
    if reproducible:
        assert float(residual.abs().max()) < 1e-6
    else:
        assert float(residual.std()) > 0.5 * noise_std


def test_client_level_noise_on_the_mean_is_sigma_c_over_m() -> None:
    # zero changes: what is released is the noise alone, sum noise N(0, (sigma C)^2) divided by m
    fed, trainer = client_level(False, sigma=2.0)
    prev = {"w": torch.zeros(20000)}
    out = fed.method.aggregate(ServerState(0, prev), [ClientUpdate(str(i), {"w": torch.zeros(20000)}, 10) for i in range(3)])
    assert float(out.adapter["w"].std()) == pytest.approx(2.0 * 1.0 / trainer.expected_clients, rel=0.03)


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_client_level_init_noise_is_not_rebuildable(reproducible: bool) -> None:
    fed, trainer = client_level(reproducible)
    msgs = trainer.add_init_noise([({"w": torch.zeros(3000)}, 10)])
    z = torch.normal(0.0, 1.0, size=(3000,), generator=seed_generator(fed.cfg.seed, 4))
    residual = fit_residual(msgs[-1][0]["w"].double(), z.double())
    if reproducible:
        assert float(residual.abs().max()) < 1e-5
    else:
        assert float(residual.std()) > 0.5 * fed.cfg.dp.noise_multiplier * 1.0  # sigma C on the sum


# --- two deployment nodes: same seed, client index 0, same shard -----------------------------------------
def node_federation(**dp):
    # what a data-path node builds (clientapp.load_node): one client, its whole file, client index 0
    return tiny_federation(federation={"clients": 1, "partition": "iid", "min_clients": 1}, dp=dp,
                           init={"source": "federated"})


def test_two_nodes_with_the_same_seed_and_shard_add_different_init_noise() -> None:
    sigma, clip = 2.0, 0.01
    fed = node_federation(mode="sample", noise_multiplier=sigma, max_grad_norm=clip)
    a, _ = make_dp_trainer(fed).init_message(fed, 0)
    b, _ = make_dp_trainer(fed).init_message(fed, 0)
    assert float((flat(a) - flat(b)).std()) > sigma * clip  # ~ sqrt(2) sigma C; identical noise would cancel


def test_two_nodes_with_the_same_seed_and_shard_take_different_dp_sgd_steps() -> None:
    fed = node_federation(mode="sample", noise_multiplier=1.0)
    start = {k: v.clone() for k, v in fed.adapted.get_state().items()}
    a = trained(fed, make_dp_trainer(fed), start)
    b = trained(fed, make_dp_trainer(fed), start)
    assert not torch.equal(a, b)


# --- reproducible mode: refused over Flower, labelled everywhere else --------------------------------------
REPRO = {"mode": "sample", "epsilon": 3.0, "reproducible_noise": True}


def test_reproducible_noise_is_refused_by_the_flower_server() -> None:
    with pytest.raises(UsageError, match="dp.reproducible_noise = true .*not private.*drop it to run over Flower"):
        FedsbStrategy(tiny_config(dp=REPRO), FlowerOptions())
    with pytest.raises(UsageError, match="not private"):
        FedsbStrategy(tiny_config(dp={**REPRO, "mode": "client"}), FlowerOptions())


def test_a_node_refuses_a_server_config_with_reproducible_noise() -> None:
    meta = ConfigRecord({"config": dumps(tiny_config(dp=REPRO).to_dict()), "wire-dtype": "float32"})
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
                  state=RecordDict({STATE_META: meta}), run_config={})
    with pytest.raises(UsageError, match="not private"):
        load_node(ctx)


@pytest.mark.parametrize("command", ["simulate", "deploy"])
def test_flower_commands_refuse_reproducible_noise_before_starting(command: str) -> None:
    from fedsb.cli.flower import deploy_cmd, simulate_cmd

    cmd = simulate_cmd if command == "simulate" else deploy_cmd
    with pytest.raises(UsageError, match="not private"):
        cmd(["--model", "tiny-bert", "--dp.epsilon", "1", "--dp.reproducible_noise", "true"])


def test_secret_noise_is_the_default_and_labelled_in_rows_and_summary() -> None:
    fed = tiny_federation(federation={"rounds": 1}, dp={"mode": "sample", "epsilon": 3.0}, init={"source": "public"})
    result = Simulator(fed.cfg, fed=fed, trainer=make_dp_trainer(fed), progress=False).run()
    assert [r["dp_noise"] for r in result.rows] == ["secret", "secret"]
    assert result.summary["privacy"]["noise"] == "secret"


def test_reproducible_noise_is_labelled_on_terminal_metrics_and_summary(tmp_path: Path, capsys) -> None:
    from fedsb.cli import main

    out = tmp_path / "run"
    args = ["run", "--model", "tiny-bert", "--rounds", "1", "--steps", "1", "--rank", "4", "--train.batch_size", "4",
            "--init.source", "public", "--task.max_test_examples", "16", "--train.threads", "1", "--no-progress",
            "--dp.epsilon", "3", "--dp.reproducible_noise", "true", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count(NOT_PRIVATE) >= 2  # at the start, and next to the epsilon spent at the end
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("epsilon" in r and NOT_PRIVATE in r["dp_noise"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert NOT_PRIVATE in summary["privacy"]["noise"]


# --- delta ---------------------------------------------------------------------------------------------
def test_default_delta_is_a_tenth_of_one_over_n() -> None:
    fed = tiny_federation(dp={"mode": "sample", "epsilon": 1.0})
    sizes = [len(s) for s in fed.shards]
    delta = make_dp_trainer(fed).ledger.delta
    assert delta == pytest.approx(1 / (10 * max(sizes))) and delta <= 1 / (10 * min(sizes))
    fed = tiny_federation(dp={"mode": "client", "epsilon": 1.0}, init={"source": "public"})
    assert make_dp_trainer(fed).ledger.delta == pytest.approx(1 / (10 * 3))


@pytest.mark.parametrize("mode", ["sample", "client"])
def test_delta_above_one_over_n_is_refused_unless_allowed(mode: str) -> None:
    fed = tiny_federation(dp={"mode": mode, "epsilon": 1.0}, init={"source": "public"})
    n = max(len(s) for s in fed.shards) if mode == "sample" else 3
    dp = fed.cfg.dp
    dp.delta = 1.5 / n
    with pytest.raises(UsageError, match=r"dp.delta = .* is looser than 1/.*dp.allow_loose_delta = true"):
        make_dp_trainer(fed)
    dp.allow_loose_delta = True
    assert math.isclose(make_dp_trainer(fed).ledger.delta, 1.5 / n)
    dp.delta, dp.allow_loose_delta = 1 / n, False
    assert make_dp_trainer(fed).ledger.delta == 1 / n
