"""The one-time B/A broadcast (fedsb.init.broadcast): encode, decode, re-orthonormalise, re-fit R0, sizes, checks."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedsb.core.federation import initialise_adapters
from fedsb.errors import FedsbError
from fedsb.init.broadcast import (
    BROADCAST_BITS,
    SCALE,
    decode_bases,
    encode_bases,
    expected_broadcast,
    layer_dims,
    message_bytes,
    orthonormal_columns,
)
from tests.helpers import tiny_config, tiny_federation

ROOT = Path(__file__).resolve().parents[2]


def random_orthonormal(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    return q.to(torch.float32)


def subspace_cos2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared cosine of the principal angles between the column spans of orthonormal x and y."""
    return float(torch.linalg.svdvals(x.double().T @ y.double()).pow(2).mean())


@pytest.mark.parametrize("shape", [(40, 6), (7, 7), (300, 16)])
def test_householder_q_is_orthonormal_and_equals_a_reference_qr(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    q = orthonormal_columns(x)
    assert q.dtype == torch.float32 and q.shape == x.shape
    torch.testing.assert_close(q.T @ q, torch.eye(shape[1]), atol=1e-5, rtol=0)
    # the reference: LAPACK's QR in float64 with the same sign convention (diag(R) >= 0)
    q_ref, r_ref = torch.linalg.qr(x.double())
    q_ref = q_ref * torch.where(torch.diagonal(r_ref) < 0, -1.0, 1.0)
    torch.testing.assert_close(q.double(), q_ref, atol=1e-6, rtol=0)
    r = q.double().T @ x.double()  # upper triangular with a non-negative diagonal
    assert float(torch.tril(r, -1).abs().max()) < 1e-5 and bool((torch.diagonal(r) >= 0).all())


def test_householder_of_a_rank_deficient_matrix_is_still_orthonormal() -> None:
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(2))
    x[:, 2] = 0.0
    x[:, 4] = x[:, 0]
    q = orthonormal_columns(x)
    torch.testing.assert_close(q.T @ q, torch.eye(5), atol=1e-5, rtol=0)


def bases(d_out: int = 48, d_in: int = 40, r: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_orthonormal(d_out, r, seed), random_orthonormal(d_in, r, seed + 1).T.contiguous()


def fake_adapted(b: torch.Tensor, a: torch.Tensor) -> SimpleNamespace:
    """One layer with what encode_bases and layer_dims read."""
    layer = SimpleNamespace(lora_B=SimpleNamespace(weight=b), lora_A=SimpleNamespace(weight=a), d_out=b.shape[0],
                            d_in=a.shape[1], rank=b.shape[1])
    return SimpleNamespace(layers={"l0": layer})


@pytest.mark.parametrize("bits", BROADCAST_BITS)
def test_decoded_bases_are_orthonormal_close_to_the_originals_and_sized_by_the_formula(bits: int) -> None:
    b, a = bases()
    adapted = fake_adapted(b, a)
    msg = encode_bases(adapted, bits)  # type: ignore[arg-type]
    dims = layer_dims(adapted)  # type: ignore[arg-type]
    out = decode_bases(msg, dims, bits)
    qb, qa = out["l0.lora_B.weight"], out["l0.lora_A.weight"]
    assert qb.shape == b.shape and qa.shape == a.shape
    torch.testing.assert_close(qb.T @ qb, torch.eye(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(qa @ qa.T, torch.eye(6), atol=1e-5, rtol=0)
    floor = {32: 1 - 1e-6, 16: 0.9999, 8: 0.999, 4: 0.95}[bits]
    assert subspace_cos2(qb, b) > floor and subspace_cos2(qa.T, a.T) > floor
    if bits == 32:
        assert torch.equal(qb, b) and torch.equal(qa, a)  # nothing re-fitted at full precision
    d_out, d_in, r = 48, 40, 6
    want = {32: 4 * r * (d_out + d_in), 16: 2 * r * (d_out + d_in),
            8: r * (d_out + d_in) + 8 * r, 4: math.ceil(4 * d_out * r / 8) + math.ceil(4 * d_in * r / 8) + 8 * r}[bits]
    assert message_bytes(msg) == expected_broadcast(dims, bits).bytes == want
    assert expected_broadcast(dims, bits).params == r * (d_out + d_in)


DIGEST = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[1])
from tests.init.test_broadcast import digest
print(digest(int(sys.argv[3])))
"""


def digest(bits: int) -> str:
    """SHA-256 of the decoded bases of a fixed message (the encoding is the server's alone; decoding is everyone's)."""
    b, a = bases(d_out=200, d_in=120, r=8, seed=5)
    adapted = fake_adapted(b, a)
    out = decode_bases(encode_bases(adapted, bits), layer_dims(adapted), bits)  # type: ignore[arg-type]
    h = hashlib.sha256()
    for k in sorted(out):
        h.update(out[k].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_decoding_is_bit_identical_in_separate_processes_and_thread_counts(bits: int) -> None:
    here = digest(bits)
    assert here != digest(32)  # the decoded bases differ from the originals: the digest sees them
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", DIGEST, str(ROOT), str(threads), str(bits)], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == here


def test_bad_broadcasts_are_refused() -> None:
    b, a = bases()
    adapted = fake_adapted(b, a)
    dims = layer_dims(adapted)  # type: ignore[arg-type]
    good = encode_bases(adapted, 8)  # type: ignore[arg-type]
    key = "l0.lora_B.weight"

    def refused(msg: dict[str, torch.Tensor], match: str, bits: int = 8) -> None:
        with pytest.raises(FedsbError, match=match):
            decode_bases(msg, dims, bits)

    refused({k: v for k, v in good.items() if k != key + SCALE}, "missing")
    refused({**good, "extra": torch.zeros(1)}, "unexpected")
    refused({**good, key + SCALE: good[key + SCALE].double()}, "float32 of shape")
    refused({**good, key + SCALE: good[key + SCALE][:-1]}, "float32 of shape")
    refused({**good, key + SCALE: torch.full_like(good[key + SCALE], float("inf"))}, "non-finite")
    refused({**good, key + SCALE: -good[key + SCALE]}, "negative")
    refused({**good, key: good[key][:-1]}, "packed uint8 bytes")
    refused({**good, key: good[key].to(torch.int16)}, "packed uint8 bytes")
    refused({**good, key: torch.full_like(good[key], 255)}, "code above 254")
    refused(good, "144 packed uint8 bytes", bits=4)  # a node with another init.broadcast_bits
    refused(good, "unexpected", bits=16)
    half = encode_bases(adapted, 16)  # type: ignore[arg-type]
    refused({**half, key: half[key].T.contiguous()}, "float16 of shape", bits=16)
    refused({**half, key: half[key].float()}, "float16 of shape", bits=16)
    full = encode_bases(adapted, 32)  # type: ignore[arg-type]
    refused({**full, key: full[key] * float("nan")}, "finite float32", bits=32)
    with pytest.raises(FedsbError, match="broadcast_bits"):
        encode_bases(adapted, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_server_runs_on_the_decoded_bases_with_r0_refit_to_the_broadcast_span(bits: int) -> None:
    # the same init at full precision is the reference: s B R0 A = the best rank-r approximation of dW
    ref = tiny_federation(init={"broadcast_bits": 32})
    initialise_adapters(ref)
    fed = tiny_federation(init={"broadcast_bits": bits})
    up = initialise_adapters(fed)
    decoded = decode_bases(up["broadcast"], layer_dims(fed.adapted), bits)
    for name, layer in fed.adapted.layers.items():
        b, a, r0 = layer.lora_B.weight.detach(), layer.lora_A.weight.detach(), layer.lora_R.weight.detach()
        assert torch.equal(b, decoded[f"{name}.lora_B.weight"]) and torch.equal(a, decoded[f"{name}.lora_A.weight"])
        rl = ref.adapted.layers[name]
        m = rl.lora_B.weight.double() @ rl.lora_R.weight.double() @ rl.lora_A.weight.double()
        # R0 = Q_B^T M Q_A^T: s Q_B R0 Q_A is the projection of M onto the broadcast span (brute force, float64)
        p_b, p_a = b.double() @ b.double().T, a.double().T @ a.double()
        torch.testing.assert_close(b.double() @ r0.double() @ a.double(), p_b @ m @ p_a, atol=1e-6, rtol=1e-5)
        assert subspace_cos2(b, rl.lora_B.weight.detach()) > (0.95 if bits == 4 else 0.999)
    assert message_bytes(up["broadcast"]) == up["broadcast_size"].bytes == expected_broadcast(layer_dims(fed.adapted), bits).bytes


def test_broadcast_bits_is_a_validated_config_key() -> None:
    from fedsb.config import resolve
    from fedsb.errors import UsageError

    assert tiny_config().init.broadcast_bits == 4
    assert resolve(None, [("init.broadcast_bits", "4")]).init.broadcast_bits == 4
    with pytest.raises(UsageError, match="broadcast_bits"):
        resolve(None, [("init.broadcast_bits", "2")])

