"""Init sources: sign votes, bit packing, low-rank factors, exact byte counts, message validation."""

from __future__ import annotations

import math

import pytest
import torch

from fedsb.adapters.lora_sb_init import lora_sb_factors
from fedsb.adapters.subspace import mean_cos2
from fedsb.config import resolve
from fedsb.core.federation import initialise_adapters
from fedsb.errors import FedsbError, UsageError
from fedsb.init.sources import (
    DenseInit,
    LowRankInit,
    SignInit,
    dequantize_columns,
    expected_upload,
    get_init_source,
    pack_codes,
    pack_signs,
    quantize_columns,
    rotate_rows,
    unpack_codes,
    unpack_signs,
)
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_config, tiny_federation

ETA = 1e-3
SHAPES = {"l0": (12, 9), "l1": (7, 13)}


def grads(seed: int, shapes=SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g) for n, s in shapes.items()}


# --- bit packing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 13 * 7])
def test_sign_packing_round_trips_odd_sizes(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    x[0] = 0.0  # zero has no bit of its own: it votes negative
    packed = pack_signs(x)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
    votes = unpack_signs(packed, n)
    expected = torch.where(x > 0, 1, -1).to(torch.int8)
    assert torch.equal(votes, expected)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("n", [1, 5, 17])
def test_code_packing_round_trips(bits: int, n: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits * 100 + n))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [4, 8])
def test_column_quantisation_error_is_at_most_half_a_step(bits: int) -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 100.0, 0.01])
    codes, scale = quantize_columns(x, bits)
    y = dequantize_columns(codes, scale, bits, 50)
    assert ((x - y).abs() <= scale / 2 + 1e-6 * scale).all()


def test_rotation_is_orthogonal_and_inverted_exactly() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(2))  # two blocks: 256 + 44
    y = rotate_rows(x, 7)
    assert torch.allclose(y.norm(dim=0), x.norm(dim=0), atol=1e-4)
    assert not torch.allclose(y, x)
    assert torch.allclose(rotate_rows(y, 7, inverse=True), x, atol=1e-5)
    assert torch.equal(rotate_rows(x, 7), y)  # deterministic: every party derives the same H


# --- majority vote -------------------------------------------------------------------------------------


def test_majority_vote_equals_sign_of_sum_when_clients_agree() -> None:
    base = grads(0)
    # every client's sum has the same signs, different magnitudes
    clients = [{n: g * (1 + 3 * torch.rand(g.shape, generator=torch.Generator().manual_seed(c))) for n, g in base.items()}
               for c in range(3)]
    src = SignInit(ETA, SHAPES)
    out = src.combine([(src.encode(c, 5 + i), 5 + i) for i, c in enumerate(clients)])
    dense = DenseInit(ETA).combine([(DenseInit(ETA).encode(c, 5), 5) for c in clients])
    for n in SHAPES:
        assert torch.equal(out[n], dense[n])
        assert torch.equal(out[n], -ETA * torch.sign(base[n]))


def test_weighted_votes_respect_example_counts() -> None:
    pos = {n: torch.ones(s) for n, s in SHAPES.items()}
    neg = {n: -torch.ones(s) for n, s in SHAPES.items()}
    src = SignInit(ETA, SHAPES)
    # one client with 10 examples outvotes two with 3 each, and the other way round
    out = src.combine([(src.encode(pos, 10), 10), (src.encode(neg, 3), 3), (src.encode(neg, 3), 3)])
    assert all(torch.equal(out[n], torch.full(s, -ETA)) for n, s in SHAPES.items())
    out = src.combine([(src.encode(pos, 5), 5), (src.encode(neg, 3), 3), (src.encode(neg, 3), 3)])
    assert all(torch.equal(out[n], torch.full(s, ETA)) for n, s in SHAPES.items())


def test_ties_are_broken_deterministically_to_zero() -> None:
    shapes = {"a": (1, 3)}
    src = SignInit(ETA, shapes)
    x, y = {"a": torch.tensor([[1.0, 1.0, -1.0]])}, {"a": torch.tensor([[-1.0, 1.0, 1.0]])}
    out = src.combine([(src.encode(x, 4), 4), (src.encode(y, 4), 4)])["a"]
    assert torch.equal(out, -ETA * torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.equal(src.combine([(src.encode(y, 4), 4), (src.encode(x, 4), 4)])["a"], out), "order must not matter"


def test_combining_one_message_at_a_time_equals_combining_the_list() -> None:
    """The server adds init messages as they arrive (memory independent of k); the result is the batch one."""
    from fedsb.init.sources import Combiner

    clients = [grads(c) for c in range(4)]
    for src in (DenseInit(ETA, SHAPES), SignInit(ETA, SHAPES), LowRankInit(ETA, SHAPES, rank=2, bits=8)):
        msgs = [(src.encode(c, 3 + i), 3 + i) for i, c in enumerate(clients)]
        combiner = Combiner(src)
        for m, n in msgs:
            combiner.add(m, n)
        streamed, batch = combiner.result(), src.combine(msgs)
        assert all(torch.equal(streamed[n], batch[n]) for n in SHAPES), src.name
    with pytest.raises(FedsbError, match="no init messages"):
        Combiner(SignInit(ETA, SHAPES)).result()


# --- low-rank ------------------------------------------------------------------------------------------


def test_lowrank_factors_of_sufficient_rank_reproduce_the_dense_init() -> None:
    shapes = {"a": (40, 30), "b": (25, 35)}
    g = torch.Generator().manual_seed(3)
    true_rank = 3
    clients = [{n: torch.randn(d_out, true_rank, generator=g) @ torch.randn(true_rank, d_in, generator=g)
                for n, (d_out, d_in) in shapes.items()} for _ in range(3)]
    dense = DenseInit(ETA).combine([(c, 8) for c in clients])
    for r_prime in (true_rank, 2 * true_rank):
        msgs = [(LowRankInit(ETA, shapes, seed=i, rank=r_prime).encode(c, 8), 8) for i, c in enumerate(clients)]
        low = LowRankInit(ETA, shapes, rank=r_prime).combine(msgs)
        for n in shapes:
            b_d, a_d, _ = lora_sb_factors(dense[n], 4, 1.0, "exact")
            b_l, a_l, _ = lora_sb_factors(low[n], 4, 1.0, "exact")
            assert mean_cos2(b_d, b_l) > 0.999 and mean_cos2(a_d.T, a_l.T) > 0.999


def test_lowrank_below_true_rank_differs_from_dense() -> None:
    """The reproduction test above can fail: too few factors do change the init."""
    shapes = {"a": (40, 30)}
    clients = [grads(10 + c, shapes) for c in range(3)]  # full rank
    dense = DenseInit(ETA).combine([(c, 8) for c in clients])["a"]
    low = LowRankInit(ETA, shapes, rank=1).combine([(LowRankInit(ETA, shapes, rank=1).encode(c, 8), 8) for c in clients])["a"]
    b_d, _, _ = lora_sb_factors(dense, 4, 1.0, "exact")
    b_l, _, _ = lora_sb_factors(low, 4, 1.0, "exact")
    assert mean_cos2(b_d, b_l) < 0.9


@pytest.mark.parametrize(("bits", "min_agree"), [(16, 0.99), (8, 0.98), (4, 0.9)])
def test_quantised_lowrank_stays_close_to_float32(bits: int, min_agree: float) -> None:
    shapes = {"a": (64, 48)}
    g = torch.Generator().manual_seed(5)
    clients = [{"a": torch.randn(64, 2, generator=g) @ torch.randn(2, 48, generator=g)} for _ in range(3)]
    full = LowRankInit(ETA, shapes, rank=4).combine([(LowRankInit(ETA, shapes, rank=4).encode(c, 8), 8) for c in clients])["a"]
    src = LowRankInit(ETA, shapes, rank=4, bits=bits)
    q = src.combine([(src.encode(c, 8), 8) for c in clients])["a"]
    assert (torch.sign(q) == torch.sign(full)).float().mean() > min_agree


# --- byte counts ---------------------------------------------------------------------------------------


def test_one_time_bytes_equal_the_formulas() -> None:
    shapes = {"odd": (5, 7), "sq": (384, 384), "wide": (3, 40)}
    sums = grads(1, shapes)
    sign = SignInit(ETA, shapes)
    msg = sign.encode(sums, 4)
    assert sign.upload_bytes(msg) == sum(math.ceil(o * i / 8) for o, i in shapes.values())
    assert sign.upload_params(msg) == sum(o * i for o, i in shapes.values())
    r = 4
    for bits, per_layer in [
        (32, lambda o, i, k: 4 * k * (o + i)),
        (16, lambda o, i, k: 2 * k * (o + i)),
        (8, lambda o, i, k: k * (o + i) + 2 * 4 * k),
        (4, lambda o, i, k: math.ceil(4 * k * o / 8) + math.ceil(4 * k * i / 8) + 2 * 4 * k),
    ]:
        src = LowRankInit(ETA, shapes, rank=r, bits=bits)
        # a layer smaller than r' sends min(r', d) factors
        expected = sum(per_layer(o, i, min(r, o, i)) for o, i in shapes.values())
        assert src.upload_bytes(src.encode(sums, 4)) == expected, bits
    dense = DenseInit(ETA, shapes)
    assert dense.upload_bytes(dense.encode(sums, 4)) == sum(4 * o * i for o, i in shapes.values())


@pytest.mark.parametrize(("source", "bits"), [("federated", 32), ("federated-sign", 32), ("federated-lowrank", 32),
                                              ("federated-lowrank", 16), ("federated-lowrank", 8), ("federated-lowrank", 4),
                                              ("federated-lowrank", 2)])
def test_expected_upload_matches_the_encoded_messages(source: str, bits: int) -> None:
    shapes = {"odd": (5, 7), "sq": (33, 33), "wide": (3, 40)}
    src = get_init_source(source, ETA, shapes=shapes, rank=4, bits=bits)
    msg = src.encode(grads(2, shapes), 4)
    assert expected_upload(source, shapes, 4, bits) == {"params": src.upload_params(msg), "bytes": src.upload_bytes(msg)}


# --- validation ----------------------------------------------------------------------------------------


def test_sign_rejects_malformed_messages() -> None:
    src = SignInit(ETA, SHAPES)
    good = src.encode(grads(0), 4)
    with pytest.raises(FedsbError, match="packed uint8"):
        src.combine([({**good, "l0": good["l0"][:-1]}, 4)])
    with pytest.raises(FedsbError, match="packed uint8"):
        src.combine([({**good, "l0": good["l0"].to(torch.int16)}, 4)])
    with pytest.raises(FedsbError, match="missing keys"):
        src.combine([({"l0": good["l0"]}, 4)])
    with pytest.raises(FedsbError, match="examples"):
        src.combine([(good, 0)])


def test_lowrank_rejects_malformed_messages() -> None:
    src = LowRankInit(ETA, SHAPES, rank=2)
    good = src.encode(grads(0), 4)
    bad = dict(good)
    bad["l0.left"] = torch.full_like(good["l0.left"], float("nan"))
    with pytest.raises(FedsbError, match="non-finite"):
        src.combine([(bad, 4)])
    too_big = LowRankInit(ETA, SHAPES, rank=3).encode(grads(0), 4)
    with pytest.raises(FedsbError, match="k <= 2"):
        src.combine([(too_big, 4)])
    q = LowRankInit(ETA, SHAPES, rank=2, bits=4)
    with pytest.raises(FedsbError, match="missing keys"):
        q.combine([(good, 4)])
    with pytest.raises(FedsbError, match="lowrank_bits"):
        LowRankInit(ETA, SHAPES, bits=3)


def test_dense_rejects_malformed_messages_and_keeps_the_total() -> None:
    from fedsb.init.sources import Combiner

    src = DenseInit(ETA, SHAPES)
    good = src.encode(grads(0), 4)
    combiner = Combiner(src)
    combiner.add(good, 4)
    before = {k: v.clone() for k, v in combiner.total.items()}
    name = next(iter(SHAPES))
    for bad, match in [({**good, name: torch.full_like(good[name], float("inf"))}, "non-finite"),
                       ({**good, name: good[name][:-1]}, "expected float32 of shape"),
                       ({**good, name: good[name].double()}, "expected float32 of shape"),
                       ({name: good[name]}, "missing keys")]:
        with pytest.raises(FedsbError, match=match):
            combiner.add(bad, 4)
    assert all(torch.equal(combiner.total[k], before[k]) for k in before), "a rejected message must not count"


# --- through the federation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "extra"), [("federated-sign", {}), ("federated-lowrank", {}),
                                                ("federated-lowrank", {"lowrank_rank": 3, "lowrank_bits": 4})])
def test_initialise_adapters_reports_the_exact_wire_bytes(source: str, extra: dict) -> None:
    fed = tiny_federation(init={"source": source, **extra})
    up = initialise_adapters(fed)
    dims = [(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]
    if source == "federated-sign":
        assert up["upload_bytes"] == sum(math.ceil(o * i / 8) for o, i in dims)
    elif not extra:  # the default: init.lowrank_rank = 0 means r at 8 bits
        k = fed.cfg.adapter.rank
        assert fed.cfg.init.lowrank_bits == 8
        assert up["upload_bytes"] == sum(min(k, o, i) * (o + i) + 8 * min(k, o, i) for o, i in dims)
    else:
        assert up["upload_bytes"] == sum(math.ceil(4 * 3 * o / 8) + math.ceil(4 * 3 * i / 8) + 8 * 3 for o, i in dims)
    for layer in fed.adapted.layers.values():  # B has orthonormal columns, A orthonormal rows
        b, a = layer.lora_B.weight, layer.lora_A.weight
        assert torch.allclose(b.T @ b, torch.eye(b.shape[1]), atol=1e-4)
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)


def test_simulated_run_with_sign_init_records_one_time_upload() -> None:
    cfg = tiny_config(init={"source": "federated-sign"}, federation={"rounds": 1})
    res = Simulator(cfg, progress=False).run()
    one = res.summary["comm"]["one_time"]
    dims = [(layer.d_out, layer.d_in) for layer in res.fed.adapted.layers.values()]
    assert one["init_upload_bytes_per_client"] == sum(math.ceil(o * i / 8) for o, i in dims)
    assert one["init_upload_params_per_client"] == sum(o * i for o, i in dims)
    assert res.rows[-1]["accuracy"] is not None


def test_config_accepts_the_new_sources_and_rejects_bad_options() -> None:
    cfg = resolve(None, [("init.source", "federated-lowrank"), ("init.lowrank_rank", "8"), ("init.lowrank_bits", "4")])
    assert (cfg.init.source, cfg.init.lowrank_rank, cfg.init.lowrank_bits) == ("federated-lowrank", 8, 4)
    with pytest.raises(UsageError, match="did you mean 'federated-sign'"):
        resolve(None, [("init.source", "federated-sing")])
    with pytest.raises(UsageError, match="lowrank_rank"):
        resolve(None, [("init.lowrank_rank", "-1")])


def test_public_init_without_public_examples_is_refused_not_random() -> None:
    """A federation built for the federated init holds no public slice: switching its source to public must
    fail loudly (an SVD of a zero gradient would give a random subspace)."""
    from fedsb.core.federation import initialise_adapters
    from fedsb.errors import FedsbError
    from tests.helpers import tiny_federation

    fed = tiny_federation(method="fed-sb")
    assert not fed.public
    fed.cfg.init.source = "public"
    with pytest.raises(FedsbError, match="no public examples"):
        initialise_adapters(fed)
    assert tiny_federation(method="fed-sb", init={"source": "public"}).public, "a public federation holds its slice"


# --- bounded influence of one client on B and A (DESIGN §5.2) --------------------------------------------

ATTACK_SHAPES = {"a": (64, 48)}


def shared_signal_messages(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """k honest gradient sums: a common rank-4 signal (what the clients' data agree on) plus client noise."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(64, 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(48, 4, generator=g))
    signal = u @ torch.diag(torch.tensor([8.0, 6.0, 5.0, 4.0])) @ v.T
    return [{"a": signal + torch.randn(64, 48, generator=g) / 16} for _ in range(k)]


def init_factors(src, msgs: list[tuple[dict[str, torch.Tensor], int]], **bounds) -> tuple[torch.Tensor, torch.Tensor]:
    from fedsb.init.sources import Combiner

    combiner = Combiner(src, **bounds)
    for m, n in msgs:
        combiner.add(m, n)
    b, a, _ = lora_sb_factors(combiner.result()["a"], 4, 1.0, "exact")
    return b, a


def agreement(x: tuple[torch.Tensor, torch.Tensor], y: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The smaller of the mean cos^2 of the principal angles between the B and between the A subspaces."""
    return min(mean_cos2(x[0], y[0]), mean_cos2(x[1].T, y[1].T))


def lowrank_source(bits: int) -> LowRankInit:
    return LowRankInit(ETA, ATTACK_SHAPES, rank=8, bits=bits)


@pytest.mark.parametrize("source", ["federated", "lowrank-32", "lowrank-8"])
def test_a_scaled_init_message_counts_as_one_honest_message(source: str) -> None:
    """1e6 x a client's own message (dense sum, or low-rank factors): clipped to the median norm, the init is
    the three-client init, within a small principal angle of the honest-only one."""
    src = DenseInit(ETA, ATTACK_SHAPES) if source == "federated" else lowrank_source(int(source.split("-")[1]))
    sums = shared_signal_messages(3)
    honest = [(src.encode(s, 8), 8) for s in sums]
    scaled = (src.encode({"a": 1e6 * sums[1]["a"]}, 8), 8)
    honest_only = init_factors(src, [honest[0], honest[2]], norm_factor=1.0)
    three = init_factors(src, honest, norm_factor=1.0)
    attacked = init_factors(src, [honest[0], scaled, honest[2]], norm_factor=1.0)
    assert agreement(attacked, three) > 0.99
    assert agreement(attacked, honest_only) > 0.95


@pytest.mark.parametrize("source", ["federated", "lowrank-32", "lowrank-8"])
def test_one_client_cannot_choose_b_and_a(source: str) -> None:
    """A message of the client's choosing (a rank-4 matrix of its own) scaled by 1e6: without the bound the
    init is the attacker's subspace; with it the honest subspace survives."""
    src = DenseInit(ETA, ATTACK_SHAPES) if source == "federated" else lowrank_source(int(source.split("-")[1]))
    sums = shared_signal_messages(3)
    g = torch.Generator().manual_seed(9)
    target = {"a": torch.randn(64, 4, generator=g) @ torch.randn(4, 48, generator=g)}
    chosen = lora_sb_factors(-target["a"], 4, 1.0, "exact")[:2]
    honest = [(src.encode(s, 8), 8) for s in sums]
    bad = (src.encode({"a": 1e6 * target["a"]}, 8), 8)
    honest_only = init_factors(src, [honest[0], honest[2]], norm_factor=1.0)
    attacked = init_factors(src, [honest[0], bad, honest[2]], norm_factor=1.0)
    assert agreement(init_factors(src, [honest[0], bad, honest[2]]), chosen) > 0.8  # unbounded: the attacker's B, A
    assert agreement(attacked, chosen) < 0.3
    assert agreement(attacked, honest_only) > 0.7


def test_two_clients_a_scaled_message_is_held_to_the_honest_norm() -> None:
    """With two clients the lower median is the honest norm: the scaled message counts no more than it."""
    from fedsb.init.sources import Combiner

    src = DenseInit(ETA, ATTACK_SHAPES)
    h, bad = shared_signal_messages(2)
    combiner = Combiner(src, norm_factor=1.0)
    combiner.add(h, 8)
    combiner.add({"a": 1e6 * bad["a"]}, 8)
    combiner.result()
    assert combiner.clipped == [{"client": 1, "layers": 1, "min_scale": pytest.approx(float(h["a"].norm() / (1e6 * bad["a"].norm())), rel=1e-4)}]


def test_a_billion_sign_votes_weigh_as_one_full_client() -> None:
    """init-examples = 1e9 is capped at init.samples: wherever the two honest clients agree, their sign stands."""
    src = SignInit(ETA, ATTACK_SHAPES)
    sums = shared_signal_messages(2)
    g = torch.Generator().manual_seed(3)
    target = {"a": torch.randn(64, 48, generator=g)}
    msgs = [(src.encode(sums[0], 8), 8), (src.encode(target, 10**9), 10**9), (src.encode(sums[1], 8), 8)]
    from fedsb.init.sources import Combiner

    combiner = Combiner(src, max_examples=8)
    for m, n in msgs:
        combiner.add(m, n)
    out = combiner.result()["a"]
    agree = torch.sign(sums[0]["a"]) == torch.sign(sums[1]["a"])
    assert torch.equal(torch.sign(out)[agree], -torch.sign(sums[0]["a"])[agree])  # dW = -eta sign(sum)
    assert combiner.clipped == [{"client": 1, "examples": 10**9, "cap": 8}]
    assert not torch.equal(torch.sign(src.combine(msgs)["a"]), torch.sign(out)), "unbounded, the billion votes win"


@pytest.mark.parametrize("source", ["federated", "federated-lowrank"])
def test_initialise_adapters_bounds_a_scaled_client_message(source: str) -> None:
    """Through the federation (the simulator's and Flower's path), on by default: client 1's message scaled by
    1e6 is clipped in every layer and reported; with federation.init_norm_factor = 0 it alone decides B, A."""
    from fedsb.adapters.subspace import adapter_factors, init_agreement
    from fedsb.core.federation import client_init_message

    fed = tiny_federation(init={"source": source, "lowrank_bits": 32})
    assert fed.cfg.federation.init_norm_factor == 1.0
    msgs = [client_init_message(fed, c) for c in range(3)]
    bad = ({k: 1e6 * v if not k.endswith(".right") else v for k, v in msgs[1][0].items()}, msgs[1][1])
    initialise_adapters(fed, [bad])
    alone = adapter_factors(fed.adapted)
    up = initialise_adapters(fed, [msgs[0], bad, msgs[2]])
    assert [c["client"] for c in up["clipped"]] == [1] and up["clipped"][0]["layers"] == len(fed.adapted.layers)
    bounded = min(init_agreement(alone, adapter_factors(fed.adapted)).values())
    fed.cfg.federation.init_norm_factor = 0.0
    up = initialise_adapters(fed, [msgs[0], bad, msgs[2]])
    assert up["clipped"] == [] and min(init_agreement(alone, adapter_factors(fed.adapted)).values()) > 0.99
    assert bounded < 0.8
