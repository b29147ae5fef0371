"""The one-time B/A broadcast of LoRA-SB: encoded once by the server, decoded the same way by every party.

``init.broadcast_bits`` picks the wire format of B (``d_out x r``) and A (``r x d_in``):

- ``32``: float32, as the SVD gives them (``4 r (d_out + d_in)`` bytes per layer); nothing is re-fitted.
- ``16``: float16 values (``2 r (d_out + d_in)`` bytes).
- ``8`` / ``4``: symmetric round-to-nearest codes, one float32 scale per column of B and per row of A, packed
  (``ceil(bits d_out r / 8) + ceil(bits r d_in / 8) + 8 r`` bytes).

Below 32 bits the decoded values are no longer orthonormal, so decoding ends with a Householder QR (float64 on
the CPU, numpy element-wise operations and sums only, no BLAS: the same bits whatever the thread count) with
``diag(R) > 0``, rounded to float32. Every party, the server included, runs the model on these decoded bases;
the server re-fits its start ``R0 <- (Q_B^T B) R0 (A Q_A^T)``, the best start within the broadcast span
(the projection of ``s B R0 A`` onto it), so the exactness of averaging R is untouched: B and A are shared.

A resume re-sends the decoded bases in float32 (the server keeps no codes; ``CommLedger.record_resync``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.comm.accounting import Size
from fedsb.errors import FedsbError
from fedsb.init.sources import quantize_columns, unpack_codes

BROADCAST_BITS = (32, 16, 8, 4)
SCALE = ".scale"  # key suffix of a quantised tensor's float32 scales

Dims = dict[str, tuple[int, int, int]]  # layer -> (d_out, d_in, r)
Message = dict[str, Tensor]


def layer_dims(adapted: AdaptedModel) -> Dims:
    """``(d_out, d_in, r)`` of every adapted layer: what a receiver checks the broadcast against."""
    return {n: (layer.d_out, layer.d_in, layer.rank) for n, layer in adapted.layers.items()}


def _check_bits(bits: int) -> None:
    if bits not in BROADCAST_BITS:
        raise FedsbError(f"init.broadcast_bits = {bits!r} is not supported; choose one of {BROADCAST_BITS}")


def _names(layer: str) -> tuple[str, str]:
    return f"{layer}.lora_B.weight", f"{layer}.lora_A.weight"


# --- deterministic orthonormalisation -------------------------------------------------------------------


def orthonormal_columns(x: Tensor) -> Tensor:
    """Q (``m x n``, float32) of a Householder QR of ``x`` (``m >= n``) with ``diag(R) >= 0``.

    float64 numpy, element-wise products and ``sum`` only (no BLAS, whose results may depend on the thread
    count), so every process gets the same bits. A zero column keeps the reflector of identity: Q stays
    orthonormal whatever ``x`` is.
    """
    a = x.detach().cpu().to(torch.float64).numpy().copy()
    m, n = a.shape
    if m < n:
        raise FedsbError(f"cannot orthonormalise {n} columns of length {m}")
    vs: list[np.ndarray | None] = []
    for k in range(n):
        col = a[k:, k]
        alpha = math.sqrt(float(np.sum(col * col)))
        if alpha == 0.0:
            vs.append(None)
            continue
        v = col.copy()
        v[0] += alpha if col[0] >= 0 else -alpha  # no cancellation: R[k, k] = -sign(col[0]) alpha
        v /= math.sqrt(float(np.sum(v * v)))
        a[k:, k:] -= 2.0 * v[:, None] * np.sum(v[:, None] * a[k:, k:], axis=0)[None, :]
        vs.append(v)
    q = np.zeros((m, n))
    q[np.arange(n), np.arange(n)] = 1.0
    for k in reversed(range(n)):  # Q = H_0 ... H_{n-1} [I_n; 0]
        h = vs[k]
        if h is not None:
            q[k:, :] -= 2.0 * h[:, None] * np.sum(h[:, None] * q[k:, :], axis=0)[None, :]
    signs = np.where(np.diagonal(a)[:n] < 0, -1.0, 1.0)  # the fixed sign convention: diag(R) >= 0
    return torch.from_numpy(q * signs[None, :]).to(torch.float32)


# --- encode / decode ----------------------------------------------------------------------------------------


def _encode(x: Tensor, bits: int) -> dict[str, Tensor]:
    """One basis as columns (B, or A transposed), ``rows x r``."""
    x = x.detach().to(device="cpu", dtype=torch.float32)
    if bits == 16:
        return {"": x.to(torch.float16).contiguous()}
    codes, scale = quantize_columns(x, bits)
    return {"": codes, SCALE: scale.contiguous()}


def encode_bases(adapted: AdaptedModel, bits: int) -> Message:
    """The broadcast of every layer's current B and A (``bits`` = 32: the float32 tensors themselves)."""
    _check_bits(bits)
    out: Message = {}
    for name, layer in adapted.layers.items():
        b_name, a_name = _names(name)
        b, a = layer.lora_B.weight.detach(), layer.lora_A.weight.detach()
        if bits == 32:
            out[b_name], out[a_name] = b.to(device="cpu", dtype=torch.float32).clone(), a.to(device="cpu", dtype=torch.float32).clone()
            continue
        for key, cols, transposed in ((b_name, b, False), (a_name, a.T, True)):
            enc = _encode(cols, bits)
            if transposed and bits == 16:
                enc[""] = enc[""].T.contiguous()  # float16 A keeps its own r x d_in layout
            out.update({key + suffix: t for suffix, t in enc.items()})
    return out


def expected_keys(dims: Dims, bits: int) -> set[str]:
    suffixes = ("", SCALE) if bits <= 8 else ("",)
    return {n + s for layer in dims for n in _names(layer) for s in suffixes}


def _columns(message: Message, key: str, rows: int, r: int, bits: int, what: str, transposed: bool) -> Tensor:
    """One received basis as float32 columns (``rows x r``; A arrives as ``r x rows`` in float16), checked: dtype,
    shape, length, finite non-negative scales, codes in range."""
    t = message[key]
    if bits == 16:
        shape = (r, rows) if transposed else (rows, r)
        if t.dtype != torch.float16 or tuple(t.shape) != shape:
            raise FedsbError(f"{what}: {key!r} must be float16 of shape {shape}, got {t.dtype} {tuple(t.shape)}")
        x = t.to(torch.float32)
        x = x.T if transposed else x
    else:
        scale = message[key + SCALE]
        if scale.dtype != torch.float32 or tuple(scale.shape) != (r,):
            raise FedsbError(f"{what}: {key + SCALE!r} must be float32 of shape ({r},), got {scale.dtype} {tuple(scale.shape)}")
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise FedsbError(f"{what}: {key + SCALE!r} holds a negative or non-finite scale; the broadcast is rejected")
        want = math.ceil(bits * rows * r / 8)
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != want:
            raise FedsbError(f"{what}: {key!r} must be {want} packed uint8 bytes, got {t.dtype} {tuple(t.shape)}")
        qmax = 2 ** (bits - 1) - 1
        codes = unpack_codes(t, bits, rows * r)
        if bool((codes > 2 * qmax).any()):
            raise FedsbError(f"{what}: {key!r} holds a code above {2 * qmax}, which no {bits}-bit encoder writes")
        x = (codes.reshape(rows, r) - qmax).to(torch.float32) * scale
    if not bool(torch.isfinite(x).all()):
        raise FedsbError(f"{what}: {key!r} has non-finite values; the broadcast is rejected")
    return x


def decode_bases(message: Message, dims: Dims, bits: int, what: str = "one-time broadcast") -> dict[str, Tensor]:
    """B and A (float32 state tensors) from a received broadcast; every party decodes the server's message with this.

    Below 32 bits: dequantise, then :func:`orthonormal_columns`. Raises :class:`FedsbError` naming the bad tensor.
    """
    _check_bits(bits)
    want = expected_keys(dims, bits)
    if set(message) != want:
        missing, extra = sorted(want - set(message))[:3], sorted(set(message) - want)[:3]
        raise FedsbError(f"{what}: missing {missing}, unexpected {extra}; server and node must adapt the same layers "
                         "with the same init.broadcast_bits")
    out: dict[str, Tensor] = {}
    for layer, (d_out, d_in, r) in dims.items():
        b_name, a_name = _names(layer)
        if bits == 32:
            for key, shape in ((b_name, (d_out, r)), (a_name, (r, d_in))):
                t = message[key]
                if t.dtype != torch.float32 or tuple(t.shape) != shape or not bool(torch.isfinite(t).all()):
                    raise FedsbError(f"{what}: {key!r} must be finite float32 of shape {shape}, got {t.dtype} {tuple(t.shape)}")
                out[key] = t.clone()
            continue
        out[b_name] = orthonormal_columns(_columns(message, b_name, d_out, r, bits, what, transposed=False))
        out[a_name] = orthonormal_columns(_columns(message, a_name, d_in, r, bits, what, transposed=True)).T.contiguous()
    return out


def apply_broadcast(adapted: AdaptedModel, bits: int) -> Message:
    """Server side, after the LoRA-SB init: encode B and A, put the decoded bases in the model and re-fit R0.

    ``R0 <- (Q_B^T B) R0 (A Q_A^T)``: ``s Q_B R0 Q_A`` is the projection of the init's ``s B R0 A`` onto the
    broadcast span (float64, then float32). Returns the message every client is sent.
    """
    message = encode_bases(adapted, bits)
    if bits == 32:
        return message
    decoded = decode_bases(message, layer_dims(adapted), bits, what="the server's own broadcast")
    with torch.no_grad():
        for name, layer in adapted.layers.items():
            b_name, a_name = _names(name)
            b_old = layer.lora_B.weight.detach().to(device="cpu", dtype=torch.float64)
            a_old = layer.lora_A.weight.detach().to(device="cpu", dtype=torch.float64)
            q_b, q_a = decoded[b_name], decoded[a_name]
            assert layer.lora_R is not None  # a LoRA-SB layer
            r_old = layer.lora_R.weight.detach().to(device="cpu", dtype=torch.float64)
            r_new = (q_b.double().T @ b_old) @ r_old @ (a_old @ q_a.double().T)
            layer.lora_B.weight.copy_(q_b)
            layer.lora_A.weight.copy_(q_a)
            layer.lora_R.weight.copy_(r_new.to(torch.float32))
    return message


# --- sizes --------------------------------------------------------------------------------------------------


def expected_broadcast(dims: Dims, bits: int) -> Size:
    """The formula, per client: the values of B and A (``r (d_out + d_in)`` per layer, what
    ``Method.one_time_download`` counts) and the bytes on the wire, below 16 bits the packed codes plus one
    float32 scale per column of B and per row of A."""
    _check_bits(bits)
    params = nbytes = 0
    for d_out, d_in, r in dims.values():
        params += r * (d_out + d_in)
        if bits >= 16:
            nbytes += bits // 8 * r * (d_out + d_in)
        else:
            nbytes += math.ceil(bits * d_out * r / 8) + math.ceil(bits * r * d_in / 8) + 2 * 4 * r
    return Size(params, nbytes)


def message_bytes(message: Message) -> int:
    """Bytes of a broadcast's tensors as they travel: each tensor's own element size (codes packed in uint8)."""
    return sum(t.numel() * t.element_size() for t in message.values())


def broadcast_size(adapted: AdaptedModel, message: Message, bits: int) -> Size:
    """What the ledger records per client: the values of B and A and the message's measured bytes (codes + scales)."""
    return Size(expected_broadcast(layer_dims(adapted), bits).params, message_bytes(message))
