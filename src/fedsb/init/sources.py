"""Where the LoRA-SB init gradient comes from, and what each source puts on the wire.

- ``federated``: each client uploads the float32 sum of its raw gradients over ``init.samples`` local
  examples (``4 d_out d_in`` bytes per layer); the server adds them and forms ``dW = -eta * sign(sum)``.
  Privacy: the server sees each client's gradient sum (under DP it is clipped per example and noised).
- ``public``: the server computes the sum on a public/proxy data set it holds; nothing is uploaded and
  no private data is touched.
- ``federated-sign``: each client uploads only the sign of its gradient sum, 1 bit per element, packed
  (``ceil(d_out d_in / 8)`` bytes per layer); the server takes the example-weighted majority vote per
  element as the sign of the update. Privacy: the server sees each client's sign pattern (less than the
  sum, still a function of private data).
- ``federated-lowrank``: each client uploads a rank-r' factorisation ``left @ right.T`` of its gradient
  sum (r' = ``init.lowrank_rank``; 0 = r for quantised, 2r for float factors); the server adds the products and takes the sign. The factors
  travel as float32 (``lowrank_bits = 32``: ``4 r' (d_out + d_in)`` bytes per layer), float16 (16), or
  quantised to 8, 4 or 2 bits per entry with one float32 scale per factor column (symmetric,
  round-to-nearest after a seeded random rotation that every party derives from the layer name:
  ``ceil(bits r' d / 8)`` bytes per factor plus ``4 r'`` for the scales). The sign of the sum only
  changes where an entry is near zero, so a few bits per factor entry lose little (2 bits is too few).
  Privacy: the server sees the top r' directions of each client's sum.

Every ``combine`` validates what it receives (keys, dtype, shape, length, finite values) against the
layer shapes the server holds and raises :class:`fedsb.errors.FedsbError` naming the bad message.

One client must not choose B and A for the whole run (DESIGN §5.2): the server's :class:`Combiner` clips each
client's dense sum or low-rank product, per layer, to ``federation.init_norm_factor`` x the lower median of
the clients' norms for that layer, and a sign vote weighs at most ``init.samples`` examples (the most an
honest client's gradient sum holds).
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedsb.adapters.lora_sb_init import truncated_svd, update_direction
from fedsb.comm.accounting import payload_bytes, payload_params
from fedsb.errors import FedsbError

Shapes = dict[str, tuple[int, int]]
Message = dict[str, Tensor]


class InitSource(ABC):
    """Client encoding and server combination of init gradient sums.

    ``shapes`` maps each adapted layer to ``(d_out, d_in)``: the server checks messages against it (and
    needs it to unpack bits). ``seed`` seeds a party's local randomness, never the global RNG.
    """

    name: str
    federated: bool = True

    def __init__(self, eta: float, shapes: Shapes | None = None, seed: int = 0, **options: Any) -> None:
        self.eta = eta
        self.shapes = dict(shapes) if shapes is not None else None
        self.seed = seed

    @abstractmethod
    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> Message:
        """What one client uploads for its local gradient sums."""

    def combine(self, messages: list[tuple[Message, int]]) -> dict[str, Tensor]:
        """Per-layer update direction ``dW`` (d_out x d_in) from the clients' messages."""
        combiner = Combiner(self)
        for message, num_examples in messages:
            combiner.add(message, num_examples)
        return combiner.result()

    # The server adds messages one at a time (see Combiner): memory is one message plus a running total,
    # whatever the number of clients.
    @abstractmethod
    def start(self) -> dict[str, Tensor]:
        """An empty running total."""

    @abstractmethod
    def add(self, total: dict[str, Tensor], message: Message, num_examples: int, client: int,
            scale: dict[str, float] | None = None) -> None:
        """Check one client's message and add it to ``total`` in place (layer ``name`` times ``scale[name]``)."""

    def layer_norms(self, message: Message, client: int) -> dict[str, float] | None:
        """Check one client's message; the Frobenius norm of what it adds to each layer's total (None: this
        source adds votes, not values, so norms do not apply)."""
        return None

    @abstractmethod
    def finish(self, total: dict[str, Tensor]) -> dict[str, Tensor]:
        """The update directions from the running total of every client's message."""

    def upload_bytes(self, message: Message) -> int:
        return payload_bytes(message, "float32")

    def upload_params(self, message: Message) -> int:
        return payload_params(message)


class DenseInit(InitSource):
    """Clients send dense float32 gradient sums; the server adds them."""

    name = "federated"

    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> Message:
        return {k: v.to(device="cpu", dtype=torch.float32) for k, v in grad_sums.items()}  # messages travel as CPU tensors

    def start(self) -> dict[str, Tensor]:
        return {}

    def _check(self, message: Message, client: int, like: dict[str, Tensor]) -> None:
        shapes: Mapping[str, tuple[int, ...]] = self.shapes or {k: tuple(v.shape) for k, v in (like or message).items()}
        _check_keys(message, set(shapes), client)
        for k, v in message.items():
            if v.dtype != torch.float32 or tuple(v.shape) != tuple(shapes[k]):
                raise FedsbError(f"init message of client {client}, layer {k!r}: expected float32 of shape "
                                 f"{tuple(shapes[k])}, got {v.dtype} {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise FedsbError(f"init message of client {client}, layer {k!r} has non-finite values; it is rejected")

    def layer_norms(self, message: Message, client: int) -> dict[str, float] | None:
        self._check(message, client, {})
        return {k: float(v.double().norm()) for k, v in message.items()}

    def add(self, total: dict[str, Tensor], message: Message, num_examples: int, client: int,
            scale: dict[str, float] | None = None) -> None:
        self._check(message, client, total)
        for k, v in message.items():  # checked first: a bad message leaves the total untouched
            s = 1.0 if scale is None else scale.get(k, 1.0)
            if k in total:
                total[k].add_(v, alpha=s)
            else:
                total[k] = v.clone() if s == 1.0 else v * s

    def finish(self, total: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: update_direction(v, self.eta) for k, v in total.items()}


class PublicInit(DenseInit):
    """The server's own gradient sum on public data: same maths, nothing on the wire."""

    name = "public"
    federated = False


# --- shared checks ------------------------------------------------------------------------------------


class Combiner:
    """Adds the clients' init messages to a running total as they arrive, then forms the update directions.

    Bounds (DESIGN §5.2; off by default here, on through ``initialise_adapters``): ``norm_factor`` clips each
    message, per layer, to ``norm_factor`` x the lower median of the messages' norms for that layer (with two
    clients the smaller one, so one of two cannot raise it); ``max_examples`` caps a vote's weight. Clipping
    needs every norm before anything is added, so then the checked messages are held until :meth:`result`
    (k encoded messages, as the Flower server receives them anyway); without it each is added on arrival.
    ``clipped`` lists ``{client, layers, min_scale}`` (how many layers of that client's message were scaled
    down, and the smallest factor) and ``{client, examples, cap}`` (a capped vote weight).
    """

    def __init__(self, source: InitSource, norm_factor: float = 0.0, max_examples: int | None = None) -> None:
        self.source, self.total, self.count = source, source.start(), 0
        self.norm_factor, self.max_examples = norm_factor, max_examples
        self.held: list[tuple[Message, int, int, dict[str, float]]] = []
        self.clipped: list[dict[str, Any]] = []

    def add(self, message: Message, num_examples: int) -> None:
        if self.max_examples is not None and num_examples > self.max_examples:
            self.clipped.append({"client": self.count, "examples": num_examples, "cap": self.max_examples})
            num_examples = self.max_examples
        norms = self.source.layer_norms(message, self.count) if self.norm_factor else None
        if norms is None:
            self.source.add(self.total, message, num_examples, self.count)
        else:
            self.held.append((message, num_examples, self.count, norms))
        self.count += 1

    def result(self) -> dict[str, Tensor]:
        if self.count == 0:
            raise FedsbError("no init messages arrived; the federated init needs at least one client")
        if self.held:
            bounds = {k: self.norm_factor * _lower_median([h[3][k] for h in self.held]) for k in self.held[0][3]}
            for message, n, client, norms in self.held:
                scale = {k: b / norms[k] for k, b in bounds.items() if norms[k] > b}
                if scale:
                    self.clipped.append({"client": client, "layers": len(scale), "min_scale": min(scale.values())})
                self.source.add(self.total, message, n, client, scale)
            self.held = []
        return self.source.finish(self.total)


def _lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


def _server_shapes(source: InitSource) -> Shapes:
    if source.shapes is None:
        raise FedsbError(f"the {source.name} init's server side needs the adapted layers' shapes")
    return source.shapes


def _check_keys(message: Message, expected: set[str], client: int) -> None:
    if set(message) != expected:
        missing, extra = sorted(expected - set(message)), sorted(set(message) - expected)
        raise FedsbError(f"init message of client {client}: missing keys {missing[:3]}, unexpected keys {extra[:3]}; "
                         "client and server must adapt the same layers")


def _layer_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def wire_bytes(message: Message) -> int:
    """Exact bytes of a message's tensors: every tensor counts its own element size (uint8 bits packed 8 to a byte)."""
    return sum(t.numel() * t.element_size() for t in message.values())


# --- 1-bit sign votes ---------------------------------------------------------------------------------


def pack_signs(values: Tensor) -> Tensor:
    """1 bit per element (1 = positive, 0 = zero or negative), packed 8 to a byte, little-endian bit order.

    Returns a flat ``uint8`` tensor of ``ceil(numel / 8)`` bytes; the unused high bits of the last byte are 0.
    A bit has no room for 0, so an exactly-zero gradient votes negative (rare: it needs an input feature
    that is zero on every token).
    """
    bits = (values.detach().reshape(-1) > 0).cpu().numpy()
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def unpack_signs(packed: Tensor, numel: int) -> Tensor:
    """Votes ``+1`` / ``-1`` (int8) for the first ``numel`` bits of :func:`pack_signs`'s output."""
    bits = np.unpackbits(packed.detach().cpu().numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.astype(np.int8) * 2 - 1)


class SignInit(InitSource):
    """Clients send 1-bit signs of their gradient sums; the server takes the example-weighted majority vote.

    The weight of a client's vote is the number of examples in its gradient sum (the dense sum weighs
    clients the same way, through the size of their sums).
    """

    name = "federated-sign"

    def numel(self, name: str) -> int:
        if self.shapes is None or name not in self.shapes:
            raise FedsbError(f"layer {name!r} has no known shape; the sign init needs the adapted layers' shapes")
        return self.shapes[name][0] * self.shapes[name][1]

    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> Message:
        return {name: pack_signs(g) for name, g in grad_sums.items()}

    def start(self) -> dict[str, Tensor]:
        # Integer vote totals: the result does not depend on the order the clients arrive in.
        return {name: torch.zeros(d_out * d_in, dtype=torch.int64) for name, (d_out, d_in) in _server_shapes(self).items()}

    def add(self, total: dict[str, Tensor], message: Message, num_examples: int, client: int,
            scale: dict[str, float] | None = None) -> None:
        _check_keys(message, set(total), client)
        if num_examples <= 0:
            raise FedsbError(f"init message of client {client} claims {num_examples} examples; it must be > 0")
        for name, t in message.items():
            want = math.ceil(self.numel(name) / 8)
            if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != want:
                raise FedsbError(f"init message of client {client}, layer {name!r}: expected {want} packed uint8 bytes, "
                                 f"got {t.dtype} of shape {tuple(t.shape)}")
        for name, t in message.items():  # checked first: a bad message leaves the total untouched
            total[name].add_(unpack_signs(t, self.numel(name)).to(torch.int64), alpha=int(num_examples))

    def finish(self, total: dict[str, Tensor]) -> dict[str, Tensor]:
        # sign of the weighted vote; an exact tie gives 0 (no step on that element, as sign(0) in the dense init)
        shapes = _server_shapes(self)  # known: start() needed them
        return {name: -self.eta * torch.sign(total[name]).to(torch.float32).reshape(shapes[name]) for name in total}

    def upload_bytes(self, message: Message) -> int:
        return wire_bytes(message)

    def upload_params(self, message: Message) -> int:
        """Values encoded (one vote per element); ``upload_bytes`` has the packed size on the wire."""
        return sum(self.numel(n) for n in message)


# --- rank-r' factors ----------------------------------------------------------------------------------

LOWRANK_BITS = (2, 4, 8, 16, 32)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Unsigned ``bits``-bit codes (values in [0, 2^bits)) packed into a flat uint8 tensor, little-endian."""
    v = codes.detach().reshape(-1).cpu().numpy().astype(np.uint8)
    per = 8 // bits
    if per == 1:
        return torch.from_numpy(v)
    v = np.concatenate([v, np.zeros((-len(v)) % per, dtype=np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return torch.from_numpy(np.bitwise_or.reduce(v << shifts, axis=1).astype(np.uint8))


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_codes`: the first ``count`` codes as int64."""
    b = packed.detach().cpu().numpy()
    per = 8 // bits
    if per == 1:
        return torch.from_numpy(b[:count].astype(np.int64))
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    v = (b[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return torch.from_numpy(v.reshape(-1)[:count].astype(np.int64))


def quantize_columns(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Symmetric round-to-nearest quantisation with one float32 scale per column.

    ``x ~= (code - qmax) * scale`` with ``qmax = 2^(bits-1) - 1``; returns the packed codes and the scales.
    """
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=0) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / safe).clamp(-qmax, qmax).to(torch.int64) + qmax
    return pack_codes(codes, bits), scale.to(torch.float32)


ROTATION_BLOCK = 256
ROTATION_SEED = 0x5EED


def rotate_rows(x: Tensor, seed: int, inverse: bool = False, block: int = ROTATION_BLOCK) -> Tensor:
    """``H @ x`` (or ``H.T @ x``) for a seeded random orthogonal ``H``, block-diagonal with blocks of at most ``block``.

    Quantising ``H @ x`` instead of ``x`` spreads a few large entries (outlier features) over their block, so
    a per-column scale stops wasting the code range on them; the server undoes it with ``H.T``. Every party
    derives ``H`` from the layer name, so it costs nothing on the wire; one block is built at a time
    (memory ``block^2``, never ``d^2``).
    """
    g = torch.Generator().manual_seed(seed)  # on the CPU: every party derives the same H, whatever its device
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], block):
        n = min(block, x.shape[0] - start)
        q, r = torch.linalg.qr(torch.randn(n, n, generator=g))
        q = (q * torch.sign(torch.diagonal(r))).to(device=x.device, dtype=x.dtype)
        out[start : start + n] = (q.T if inverse else q) @ x[start : start + n]
    return out


def dequantize_columns(packed: Tensor, scale: Tensor, bits: int, rows: int) -> Tensor:
    qmax = 2 ** (bits - 1) - 1
    k = scale.numel()
    codes = unpack_codes(packed, bits, rows * k).reshape(rows, k)
    return (codes - qmax).to(torch.float32) * scale


class LowRankInit(InitSource):
    """Clients send a rank-r' factorisation ``left @ right.T`` of each gradient sum; the server adds the products.

    ``svd_lowrank`` (oversampled, ``niter`` power iterations, seeded locally per client and layer) gives the
    factors; the singular values are folded into ``left``. ``bits`` picks the wire format of the factors.
    """

    name = "federated-lowrank"

    def __init__(self, eta: float, shapes: Shapes | None = None, seed: int = 0, rank: int = 32, bits: int = 32,
                 oversample: int = 8, niter: int = 2, **options: Any) -> None:
        super().__init__(eta, shapes, seed)
        if rank < 1:
            raise FedsbError(f"init.lowrank_rank = {rank!r} must be >= 1 (or 0 for the default r')")
        if bits not in LOWRANK_BITS:
            raise FedsbError(f"init.lowrank_bits = {bits!r} is not supported; choose one of {LOWRANK_BITS}")
        self.rank, self.bits, self.oversample, self.niter = rank, bits, oversample, niter

    def _pack(self, x: Tensor, key: str) -> dict[str, Tensor]:
        # messages travel as CPU tensors; the SVD, rotation and quantisation run on the gradient's device
        if self.bits == 32:
            return {"": x.to(device="cpu", dtype=torch.float32).contiguous()}
        if self.bits == 16:
            return {"": x.to(device="cpu", dtype=torch.float16).contiguous()}
        codes, scale = quantize_columns(rotate_rows(x, _layer_seed(ROTATION_SEED, key)), self.bits)
        return {"": codes, "_scale": scale.cpu()}

    def encode(self, grad_sums: dict[str, Tensor], num_examples: int) -> Message:
        if self.shapes is None:
            self.shapes = {n: (g.shape[0], g.shape[1]) for n, g in grad_sums.items()}
        out: Message = {}
        for name, g in grad_sums.items():
            k = min(self.rank, *g.shape)
            u, s, v = truncated_svd(g, k, "lowrank", self.oversample, self.niter, _layer_seed(self.seed, name))
            for side, x in (("left", u * s), ("right", v)):  # d_out x k and d_in x k
                out.update({f"{name}.{side}{suffix}": t for suffix, t in self._pack(x, f"{name}.{side}").items()})
        return out

    def _expected_keys(self, shapes: Shapes) -> set[str]:
        suffixes = ("",) if self.bits >= 16 else ("", "_scale")
        return {f"{n}.{side}{x}" for n in shapes for side in ("left", "right") for x in suffixes}

    def _factor(self, msg: Message, key: str, rows: int, client: int) -> Tensor:
        """One received factor as float32 (rows x k; quantised ones still rotated), checked against the declared
        rank and format."""
        t = msg[key]
        if self.bits >= 16:
            want = torch.float32 if self.bits == 32 else torch.float16
            if t.dtype != want or t.dim() != 2 or t.shape[0] != rows or not 1 <= t.shape[1] <= self.rank:
                raise FedsbError(f"init message of client {client}, {key!r}: expected {want} of shape ({rows}, k <= "
                                 f"{self.rank}), got {t.dtype} {tuple(t.shape)}")
            x = t.to(torch.float32)
        else:
            scale = msg[f"{key}_scale"]
            k = scale.numel()
            if scale.dtype != torch.float32 or scale.dim() != 1 or not 1 <= k <= self.rank:
                raise FedsbError(f"init message of client {client}, {key!r}: expected float32 scales of length <= "
                                 f"{self.rank}, got {scale.dtype} {tuple(scale.shape)}")
            want_len = math.ceil(rows * k * self.bits / 8)
            if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != want_len:
                raise FedsbError(f"init message of client {client}, {key!r}: expected {want_len} packed uint8 bytes, "
                                 f"got {t.dtype} {tuple(t.shape)}")
            x = dequantize_columns(t, scale, self.bits, rows)
        if not torch.isfinite(x).all():
            raise FedsbError(f"init message of client {client}, {key!r} has non-finite values; it is rejected")
        return x

    def start(self) -> dict[str, Tensor]:
        # Running sum of the products left @ right.T (still rotated for quantised factors: H_L M H_R^T).
        return {name: torch.zeros(d_out, d_in) for name, (d_out, d_in) in _server_shapes(self).items()}

    def _factors(self, message: Message, client: int) -> dict[str, tuple[Tensor, Tensor]]:
        shapes = _server_shapes(self)
        _check_keys(message, self._expected_keys(shapes), client)
        products = {}
        for name, (d_out, d_in) in shapes.items():
            left = self._factor(message, f"{name}.left", d_out, client)
            right = self._factor(message, f"{name}.right", d_in, client)
            if left.shape[1] != right.shape[1]:
                raise FedsbError(f"init message of client {client}, layer {name!r}: factors of ranks {left.shape[1]} and "
                                 f"{right.shape[1]} differ")
            products[name] = (left, right)
        return products

    def layer_norms(self, message: Message, client: int) -> dict[str, float] | None:
        # ||L R^T||_F^2 = sum((L^T L) * (R^T R)): r' x r' work; the rotation of quantised factors is orthogonal.
        out = {}
        for name, (left, right) in self._factors(message, client).items():
            left, right = left.double(), right.double()
            out[name] = math.sqrt(max(0.0, float(((left.T @ left) * (right.T @ right)).sum())))
        return out

    def add(self, total: dict[str, Tensor], message: Message, num_examples: int, client: int,
            scale: dict[str, float] | None = None) -> None:
        products = self._factors(message, client)
        for name, (left, right) in products.items():  # checked first: a bad message leaves the total untouched
            total[name].addmm_(left, right.T, alpha=1.0 if scale is None else scale.get(name, 1.0))

    def finish(self, total: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, m in total.items():
            if self.bits < 16:  # every client rotated with the same H_L, H_R: M = H_L^T (sum) H_R, undone once
                m = rotate_rows(m, _layer_seed(ROTATION_SEED, f"{name}.left"), inverse=True)
                m = rotate_rows(m.T, _layer_seed(ROTATION_SEED, f"{name}.right"), inverse=True).T
            out[name] = update_direction(m, self.eta)
        return out

    def upload_bytes(self, message: Message) -> int:
        return wire_bytes(message)

    def upload_params(self, message: Message) -> int:
        """Values encoded: factor entries (and their scales), not the packed bytes ``upload_bytes`` counts."""
        if self.bits >= 16:
            return payload_params(message)
        if self.shapes is None:
            raise FedsbError("counting quantised factors needs the adapted layers' shapes")
        total = 0
        for key, t in message.items():
            if key.endswith("_scale"):
                layer, _, side = key[: -len("_scale")].rpartition(".")
                total += t.numel() * (self.shapes[layer][0 if side == "left" else 1] + 1)
        return total


INIT_SOURCES: dict[str, type[InitSource]] = {c.name: c for c in (DenseInit, PublicInit, SignInit, LowRankInit)}


def get_init_source(name: str, eta: float, **options: Any) -> InitSource:
    return INIT_SOURCES[name](eta, **options)


def expected_upload(source: str, shapes: Shapes, rank: int, bits: int = 32) -> dict[str, int]:
    """Analytic one-time init upload per client, ``{"params", "bytes"}``, for ``shapes`` (``(d_out, d_in)`` per layer).

    ``rank`` is r' (low-rank only; a layer smaller than r' sends ``min(r', d_out, d_in)`` factors). ``params``
    counts the values encoded (one vote per element for the sign source; factor entries and scales for low-rank).
    """
    params = nbytes = 0
    for d_out, d_in in shapes.values():
        if source == DenseInit.name:
            params += d_out * d_in
            nbytes += 4 * d_out * d_in
        elif source == SignInit.name:
            params += d_out * d_in
            nbytes += math.ceil(d_out * d_in / 8)
        elif source == LowRankInit.name:
            k = min(rank, d_out, d_in)
            params += k * (d_out + d_in)
            if bits >= 16:
                nbytes += bits // 8 * k * (d_out + d_in)
            else:
                params += 2 * k
                nbytes += math.ceil(bits * k * d_out / 8) + math.ceil(bits * k * d_in / 8) + 2 * 4 * k
    return {"params": params, "bytes": nbytes}


def default_lowrank_rank(adapter_rank: int, bits: int) -> int:
    """r' for ``init.lowrank_rank = 0``: 2r for float factors; r for quantised ones, which at 8 bits costs what
    2r costs at 4 bits and agreed better with the dense init (README "Initialisation and its communication cost")."""
    return adapter_rank if bits <= 8 else 2 * adapter_rank


def init_source_for(init: Any, adapter_rank: int, shapes: Shapes, run_seed: int, client: int | None = None) -> InitSource:
    """The configured source (``init`` is the run's :class:`fedsb.config.InitConfig`) for one party.

    ``client`` (None for the server) seeds that party's local sketch.
    """
    return get_init_source(
        init.source, init.eta, shapes=shapes, seed=run_seed * 7919 + (client + 1 if client is not None else 0),
        rank=init.lowrank_rank or default_lowrank_rank(adapter_rank, init.lowrank_bits), bits=init.lowrank_bits, oversample=init.oversample, niter=init.niter,
    )
