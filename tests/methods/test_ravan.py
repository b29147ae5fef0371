"""RAVAN: exact per head (full and subset participation, float32, unequal clients), untrained heads keep their
value, uploads are the products s_i H_i of whole heads, payload sizes equal the formulas, head selection
(random, gradient, budgets), the rank mapping, refusals under DP, and a tiny `fedsb run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedsb.adapters.model import AdaptedModel
from fedsb.cli import main
from fedsb.comm.accounting import layer_round_params, one_time_params
from fedsb.core.client import train_client
from fedsb.core.federation import Federation
from fedsb.core.summary import analytic_round_params, layer_dims
from fedsb.errors import UsageError
from fedsb.methods import METHODS, method_options
from fedsb.methods.base import ClientUpdate, ServerState, aggregation_weights
from fedsb.methods.ravan import RAVAN
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config, tiny_federation

R, HEADS, R_H = 4, 4, 2  # Fed-SB rank 4 = 4 heads of 2 x 2 (h r_h^2 = r^2)
TRAIN = {"lr": 5e-2, "local_steps": 3, "batch_size": 4, "threads": 1}


def ravan_fed(**options: object) -> Federation:
    return tiny_federation("tiny-bert", "ravan", adapter={"rank": R}, train=TRAIN, method_options=dict(options),
                           federation={"partition": "dirichlet", "dirichlet_alpha": 0.5})


def head_deltas(adapted: AdaptedModel) -> dict[tuple[str, int], torch.Tensor]:
    """``B_i (s_i H_i) A_i`` per (layer, head), float64, from explicit slices of the stacked bases."""
    out = {}
    for name, layer in adapted.layers.items():
        r = layer.head_rank
        b, a = layer.lora_B.weight.detach().double(), layer.lora_A.weight.detach().double()
        for i, prod in layer.head_products(range(layer.heads)).items():
            out[(name, i)] = b[:, i * r : (i + 1) * r] @ prod.detach().double() @ a[i * r : (i + 1) * r]
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def train_round(sim: Simulator, r: int, payload: dict[str, torch.Tensor]):
    """Every client trains from ``payload`` as the engines run it; returns updates, trained heads, per-head deltas."""
    fed, method = sim.fed, sim.fed.method
    assert sim.state is not None
    updates, trained, deltas = [], [], []
    for c in range(len(fed.shards)):
        method.load_adapter(fed.adapted, payload)
        method.begin_round(fed.adapted, sim.state.round)
        method.prepare_client(fed, c, r)
        before = fed.adapted.get_state()
        metrics = train_client(fed, c, r, 0)
        after = fed.adapted.get_state()
        for n in before:  # heads it did not select did not move
            i = n.rpartition(".lora_H.")[2].partition(".")[0]
            if ".lora_H." in n and int(i) not in fed.adapted.active_heads:
                assert torch.equal(before[n], after[n]), n
        updates.append(ClientUpdate(str(c), method.client_update(fed.adapted), len(fed.shards[c]), metrics))
        trained.append(set(fed.adapted.active_heads))
        deltas.append(head_deltas(fed.adapted))
    return updates, trained, deltas


def next_global(sim: Simulator, updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
    fed = sim.fed
    assert sim.state is not None
    sim.state = fed.method.aggregate(sim.state, updates)
    payload = fed.method.broadcast(sim.state)
    fed.method.load_adapter(fed.adapted, payload)
    fed.method.begin_round(fed.adapted, sim.state.round)
    return payload


@pytest.mark.parametrize(("options", "weighting", "ks"), [
    ({}, "examples", [4, 4, 4]),
    ({"selection": "random", "head_fractions": [0.25, 0.5, 0.75]}, "examples", [1, 2, 3]),
    ({"selection": "random", "head_fractions": [0.25]}, "uniform", [1, 1, 1]),  # 3 heads at most: one is untrained
])
def test_each_head_is_the_weighted_mean_of_its_trainers_updates(options: dict, weighting: str, ks: list[int]) -> None:
    fed = tiny_federation("tiny-bert", "ravan", adapter={"rank": R}, train=TRAIN, method_options=options,
                          federation={"partition": "dirichlet", "dirichlet_alpha": 0.5, "weighting": weighting})
    assert len({len(s) for s in fed.shards}) == 3, "shards must be unequal"
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)  # type: ignore[arg-type]
    fed.method.load_adapter(fed.adapted, payload)
    moved_scale = untrained = False
    for r in (1, 2, 3):
        start = head_deltas(fed.adapted)
        updates, trained, deltas = train_round(sim, r, payload)
        assert [len(t) for t in trained] == ks
        p = aggregation_weights(updates, weighting)  # type: ignore[arg-type]
        assert weighting == "uniform" or p != [1 / 3] * 3
        # The uploads carry s_i H_i; the scales moved, so uploading H_i alone would break the identity below.
        moved_scale |= any(abs(float(s.weight.detach()) - 1) > 1e-3 for layer in fed.adapted.layers.values()
                           for _, s in layer.ravan_heads())
        payload = next_global(sim, updates)
        glob = head_deltas(fed.adapted)
        for (layer, i), now in glob.items():
            who = [c for c in range(3) if i in trained[c]]
            if not who:
                untrained = True
                assert torch.equal(now, start[(layer, i)]), (r, layer, i)  # an untrained head keeps its value
                continue
            total = sum(p[c] for c in who)
            want = sum(p[c] / total * deltas[c][(layer, i)] for c in who)
            assert rel_err(now, want) < 1e-6, (r, layer, i)
        if ks == [HEADS] * 3:  # every head trained by every client: the whole update is the clients' weighted mean
            for layer in fed.adapted.layers:
                whole = sum(glob[(layer, i)] for i in range(HEADS))
                mean = sum(p[c] * sum(deltas[c][(layer, i)] for i in range(HEADS)) for c in range(3))
                assert rel_err(whole, mean) < 1e-6
    assert moved_scale, "the scales never moved: the test could not tell s_i H_i from H_i"
    assert untrained == (sum(ks) < HEADS)


def synthetic(aggregation: str = "per-head") -> tuple[RAVAN, ServerState, list[ClientUpdate]]:
    g = torch.Generator().manual_seed(0)
    names = [f"l{j}.lora_H.{i}.weight" for j in range(2) for i in range(3)]
    adapter = {n: torch.randn(2, 2, generator=g) for n in names} | {"cls.weight": torch.randn(2, 5, generator=g)}
    heads_of = [{0, 1}, {1}, {0, 1}]  # head 2 is trained by nobody, head 0 by clients 0 and 2
    ups = [ClientUpdate(str(c), {n: torch.randn(t.shape, generator=g) for n, t in adapter.items()
                                 if ".lora_H." not in n or int(n.split(".")[2]) in hs}, m)
           for c, (hs, m) in enumerate(zip(heads_of, [3, 10, 27], strict=True))]
    method = RAVAN(1.0, options=method_options("ravan", {"aggregation": aggregation}))
    return method, ServerState(0, adapter), ups


def test_per_head_aggregation_renormalises_over_trainers_and_keeps_untrained_heads() -> None:
    method, state, ups = synthetic()
    new = method.aggregate(state, ups).adapter
    for j in range(2):
        h0 = f"l{j}.lora_H.0.weight"
        torch.testing.assert_close(new[h0], (3 * ups[0].payload[h0] + 27 * ups[2].payload[h0]) / 30)
        h1 = f"l{j}.lora_H.1.weight"
        torch.testing.assert_close(new[h1], (3 * ups[0].payload[h1] + 10 * ups[1].payload[h1] + 27 * ups[2].payload[h1]) / 40)
        assert torch.equal(new[f"l{j}.lora_H.2.weight"], state.adapter[f"l{j}.lora_H.2.weight"])
    torch.testing.assert_close(new["cls.weight"], sum(m * u.payload["cls.weight"] for m, u in zip([3, 10, 27], ups, strict=True)) / 40)


def test_all_aggregation_counts_non_trainers_with_the_broadcast_value() -> None:
    method, state, ups = synthetic("all")
    new = method.aggregate(state, ups).adapter
    h0 = "l1.lora_H.0.weight"
    torch.testing.assert_close(new[h0], (3 * ups[0].payload[h0] + 10 * state.adapter[h0] + 27 * ups[2].payload[h0]) / 40)
    torch.testing.assert_close(new["l1.lora_H.2.weight"], state.adapter["l1.lora_H.2.weight"])


def test_upload_names_are_whole_heads_plus_the_task_head() -> None:
    method, state, _ = synthetic()
    expected = list(state.adapter)
    ok = {"l0.lora_H.1.weight", "l1.lora_H.1.weight", "cls.weight"}
    assert method.check_upload_names(ok, expected) is None
    assert method.check_upload_names(set(expected), expected) is None
    assert "only some layers" in str(method.check_upload_names(ok - {"l1.lora_H.1.weight"}, expected))
    assert "missing" in str(method.check_upload_names(ok - {"cls.weight"}, expected))
    assert "no RAVAN head" in str(method.check_upload_names({"cls.weight"}, expected))
    assert "unexpected" in str(method.check_upload_names(ok | {"l0.lora_s.1.weight"}, expected))


def test_payload_sizes_equal_the_formulas() -> None:
    fed = ravan_fed(selection="random", head_fractions=[0.3, 0.6, 1.0])  # K_c = ceil(f h): 2, 3, 4
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    layers = layer_dims(fed)
    head = sum(p.numel() for p in fed.adapted.head_parameters())
    assert fed.adapted.rank == HEADS * R_H and all(layer.head_rank == R_H for layer in fed.adapted.layers.values())
    # One time: the stacked bases, h r_h (d_in + d_out) per layer; both the ledger and the formula.
    bases = sum(HEADS * R_H * (d.d_in + d.d_out) for d in layers)
    assert sim.one_time["broadcast_params_per_client"] == bases
    assert one_time_params("ravan", R, layers)["download"] == bases
    assert sum(t.numel() for t in fed.adapted.get_state(fed.method.one_time_names(fed.adapted)).values()) == bases
    # Every round: r^2 = h r_h^2 per layer down; up K_c r_h^2 per layer (plus the task head).
    assert all(layer_round_params("ravan", R, d.d_out, d.d_in, 3) == (R * R, R * R) for d in layers)
    down = sum(t.numel() for t in fed.method.broadcast(sim.state).values())  # type: ignore[arg-type]
    assert down == len(layers) * R * R + head
    row = sim.run_round(1, fed.method.broadcast(sim.state))  # type: ignore[arg-type]
    ks = [2, 3, 4]
    assert [fed.method.heads_for(c, HEADS) for c in range(3)] == ks  # type: ignore[attr-defined]
    sampled = fed.sample_clients(1)
    ups = [ks[c] * R_H * R_H * len(layers) + head for c in sampled]  # the ledger counts what was sent
    assert row["upload_bytes_round"] == 4 * sum(ups) and row["upload_params_per_client"] == max(ups), row
    assert row["clients_accepted"] == len(sampled)
    # The summary's per-client formula is the largest client's: all 4 heads here, 2 of 4 when every client has half.
    assert analytic_round_params(fed, 3) == (4 * R_H * R_H * len(layers) + head, len(layers) * R * R + head)
    half = ravan_fed(selection="random", head_fractions=[0.5])
    assert analytic_round_params(half, 3) == (2 * R_H * R_H * len(layers) + head, len(layers) * R * R + head)


def test_random_selection_is_seeded_by_seed_round_and_client() -> None:
    fed = ravan_fed(selection="random", head_fractions=[0.5])
    m = fed.method

    def pick(c: int, r: int) -> tuple[int, ...]:
        m.begin_round(fed.adapted, 0)
        m.prepare_client(fed, c, r)
        return fed.adapted.active_heads

    picks = {(c, r): pick(c, r) for c in range(3) for r in range(1, 5)}
    assert all(len(v) == 2 for v in picks.values())
    assert picks == {(c, r): pick(c, r) for c in range(3) for r in range(1, 5)}
    assert len(set(picks.values())) > 1
    m.begin_round(fed.adapted, 1)
    assert fed.adapted.active_heads == tuple(range(HEADS))


def test_gradient_selection_takes_the_heads_with_the_largest_gradient() -> None:
    fed = ravan_fed(selection="gradient", head_fractions=[0.5])
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    m = fed.method
    m.load_adapter(fed.adapted, m.broadcast(sim.state))  # type: ignore[arg-type]
    m.begin_round(fed.adapted, 0)
    # Brute force: dL/dH_i (s_i = 1) on the client's first batch, summed over layers.
    batch = fed.objective.collate(next(fed.client_batches(1, 1)))
    fed.adapted.eval()
    hs = [h.weight for layer in fed.adapted.layers.values() for h, _ in layer.ravan_heads()]
    grads = torch.autograd.grad(fed.objective.loss(fed.adapted.model, batch), hs)
    scores = [sum(float(torch.linalg.norm(g)) for j, g in enumerate(grads) if j % HEADS == i) for i in range(HEADS)]
    fed.adapted.train()
    want = tuple(sorted(sorted(range(HEADS), key=lambda i: -scores[i])[:2]))
    assert len(set(scores)) == HEADS
    m.prepare_client(fed, 1, 1)
    assert fed.adapted.active_heads == want
    assert all(p.grad is None for p in hs)  # scoring changed nothing
    assert {n for n, p in fed.adapted.model.named_parameters() if p.requires_grad} == set(fed.adapted.trainable_state_names())


def test_gradient_scoring_and_head_subsets_are_refused_under_dp() -> None:
    fed = ravan_fed(selection="gradient", head_fractions=[0.5])
    fed.cfg = fed.cfg.model_copy(update={"dp": fed.cfg.dp.model_copy(update={"mode": "sample"})})
    with pytest.raises(UsageError, match="unnoised private batch.*selection"):
        fed.method.prepare_client(fed, 0, 1)
    fed = ravan_fed(selection="random", head_fractions=[0.5])
    fed.cfg = fed.cfg.model_copy(update={"dp": fed.cfg.dp.model_copy(update={"mode": "client"})})
    with pytest.raises(UsageError, match="selection = 'all'"):
        fed.method.prepare_client(fed, 0, 1)


def test_rank_maps_to_an_integer_head_rank_or_is_refused() -> None:
    opts = method_options("ravan", {})
    assert RAVAN.adapter_rank(16, opts) == 32 and RAVAN.head_rank(16, 4) == 8
    assert RAVAN.adapter_rank(6, method_options("ravan", {"heads": 9})) == 18
    with pytest.raises(UsageError, match="set adapter.rank to 4 or 6"):
        RAVAN.adapter_rank(5, opts)
    with pytest.raises(UsageError, match="heads"):
        method_options("ravan", {"heads": 2})
    with pytest.raises(UsageError, match="head_fractions"):
        method_options("ravan", {"head_fractions": [0.5]})  # selection = all trains every head
    with pytest.raises(UsageError, match="head_fractions"):
        method_options("ravan", {"selection": "random", "head_fractions": [1.5]})
    assert METHODS["ravan"] is RAVAN and RAVAN.core_rank and RAVAN.additive and RAVAN.exact
    assert RAVAN.plot_style not in [m.plot_style for n, m in METHODS.items() if n != "ravan"]


def test_s_is_reset_to_one_at_each_round_and_only_products_travel() -> None:
    fed = ravan_fed()
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    payload = fed.method.broadcast(sim.state)  # type: ignore[arg-type]
    assert not any(".lora_s." in n or ".lora_A." in n or ".lora_B." in n for n in payload)
    updates, _, _ = train_round(sim, 1, payload)
    layer_name, layer = next(iter(fed.adapted.layers.items()))
    prods = layer.head_products(range(HEADS))
    torch.testing.assert_close(updates[-1].payload[f"{layer_name}.lora_H.1.weight"], prods[1].detach())
    fed.method.begin_round(fed.adapted, 1)
    assert all(float(s.weight.detach()) == 1.0 for _, s in layer.ravan_heads())


TINY_RUN = ["run", "--method", "ravan", "--model", "tiny-bert", "--rounds", "2", "--steps", "2", "--rank", "4",
            "--train.batch_size", "4", "--task.max_test_examples", "16", "--train.threads", "1", "--no-progress",
            "--method_options.head_fractions", "[0.5, 1.0]"]


@pytest.mark.parametrize("dp", [[], ["--dp.mode", "sample", "--dp.epsilon", "3"]])
def test_tiny_run_writes_accuracy_rows(dp: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--method_options.selection", "random", *dp, "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(0 <= r["accuracy"] <= 1 for r in rows)
    if dp:
        assert 0 < rows[-1]["epsilon"] <= 3.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "ravan"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == HEADS * R_H


def test_run_with_gradient_scoring_under_dp_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY_RUN, "--method_options.selection", "gradient", "--dp.mode", "sample", "--dp.epsilon", "3",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unnoised private batch" in err and "Traceback" not in err


def test_config_path_builds_the_stacked_rank() -> None:
    cfg = tiny_config("tiny-bert", "ravan", adapter={"rank": 6}, method_options={"heads": 9})
    fed = tiny_federation("tiny-bert", "ravan", adapter={"rank": 6}, method_options={"heads": 9})
    assert cfg.adapter.rank == 6 and fed.adapted.rank == 18 and next(iter(fed.adapted.layers.values())).head_rank == 2


@pytest.mark.parametrize("heads", [1, 4, 9])
def test_analytic_one_time_follows_the_number_of_heads(heads: int) -> None:
    """The summary's formula counts sqrt(h) r (d_in + d_out) per layer for this run's h, as the ledger does."""
    from fedsb.core.summary import analytic_one_time

    fed = tiny_federation("tiny-bert", "ravan", adapter={"rank": 6}, train=TRAIN, method_options={"heads": heads})
    sim = Simulator(fed.cfg, fed=fed, progress=False)
    sim.initialise()
    bases = sum(math.isqrt(heads) * 6 * (d.d_in + d.d_out) for d in layer_dims(fed))
    assert analytic_one_time(fed)["download_params"] == sim.one_time["broadcast_params_per_client"] == bases
