"""Communication accounting (DESIGN.md section 4): analytical formulas and measured payload sizes.

Each method states its own formula (``Method.layer_round_params``); per adapted layer ``(d_out, d_in)`` at
rank ``r`` with ``k`` clients per round, per client per round, the five classic ones are:

==========  ===================  ===========================================
method      upload               download
==========  ===================  ===========================================
fed-sb      r^2                  r^2
fedit       r (d_in + d_out)     r (d_in + d_out)
ffa-lora    r d_out              r d_out
fedex-lora  r (d_in + d_out)     r (d_in + d_out) + d_in d_out (dense residual)
flora       r (d_in + d_out)     k r (d_in + d_out) (the stacked factors)
==========  ===================  ===========================================

A trainable head travels both ways for every method. One-time costs are reported separately: Fed-SB's
B/A broadcast ``r (d_in + d_out)`` values per layer (4 bits each plus ``2 r`` float32 scales by default:
``fedsb.init.broadcast``) and the init-gradient upload (``d_in d_out`` per layer for the dense federated init;
``fedsb.init.sources`` for the others).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from fedsb.methods import METHODS
from fedsb.methods.base import Method

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    dt = WIRE_DTYPES[dtype] if isinstance(dtype, str) else dtype
    return torch.empty((), dtype=dt).element_size()


@dataclass(frozen=True)
class LayerDims:
    d_out: int
    d_in: int


def layer_round_params(method: str, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
    """(upload, download) parameters per client per round for one adapted layer (steady state)."""
    return _method(method).layer_round_params(r, d_out, d_in, k)


def _method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}") from None


def round_params(method: str, r: int, layers: Iterable[LayerDims], k: int, head_params: int = 0) -> tuple[int, int]:
    """(upload, download) parameters per client per round for a whole model."""
    up = down = head_params if _method(method).head_travels else 0
    for d in layers:
        u, dn = layer_round_params(method, r, d.d_out, d.d_in, k)
        up += u
        down += dn
    return up, down


def one_time_params(method: str, r: int, layers: Iterable[LayerDims], init_upload_per_layer: str = "dense") -> dict[str, int]:
    """One-time parameters per client: Fed-SB's B/A broadcast and its init-gradient upload."""
    layers = list(layers)
    cls = _method(method)
    down = sum(cls.layer_one_time_download(r, d.d_out, d.d_in) for d in layers)
    dense = cls.gradient_init and init_upload_per_layer == "dense"
    up = sum(d.d_in * d.d_out for d in layers) if dense else 0
    return {"download": down, "upload": up}


def payload_params(payload: dict[str, Tensor]) -> int:
    return sum(t.numel() for t in payload.values())


def payload_bytes(payload: dict[str, Tensor], wire_dtype: str = "float32") -> int:
    """Bytes of a payload's tensors on the wire (float tensors in ``wire_dtype``, others as they are)."""
    size = dtype_bytes(wire_dtype)
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in payload.values())


def to_wire(payload: dict[str, Tensor], wire_dtype: str = "float32") -> dict[str, Tensor]:
    """Round a payload through the wire dtype, as the receiver sees it (identity for float32)."""
    dt = WIRE_DTYPES[wire_dtype]
    if dt == torch.float32:
        return payload
    return {k: (v.to(dt).to(torch.float32) if v.is_floating_point() else v) for k, v in payload.items()}


class Size(NamedTuple):
    """Parameters and bytes of one message's tensors."""

    params: int
    bytes: int


def size_of(payload: dict[str, Tensor], wire_dtype: str = "float32") -> Size:
    return Size(payload_params(payload), payload_bytes(payload, wire_dtype))


@dataclass
class ClientDownload:
    """What one client is sent at the start of a round (or for client evaluation).

    ``broadcast`` travels in the wire dtype and holds the pending base-weight increment (FedEx-LoRA residual,
    FLoRA stack) only when the client needs exactly that one; ``catchup`` is the server's absolute base
    residual, in float32, for a client that missed increments (see :class:`fedsb.core.rounds.BaseVersions`).
    """

    broadcast: dict[str, Tensor]
    catchup: dict[str, Tensor] = field(default_factory=dict)

    def size(self, wire_dtype: str) -> Size:
        return Size(payload_params(self.broadcast) + payload_params(self.catchup),
                    payload_bytes(self.broadcast, wire_dtype) + payload_bytes(self.catchup, "float32"))


@dataclass
class CommLedger:
    """Running totals of every tensor byte that travels, the one definition both engines use.

    - Rounds (``upload_*``, ``download_*``): each sampled client's download (broadcast in the wire dtype,
      the pending base increment only to a client that needs it, a float32 catch-up residual to one that
      missed increments; the catch-up share is also in ``catchup_download_*``) and each upload that arrived.
    - One-time (``one_time_*``): the init upload and the one-time broadcast (Fed-SB's B and A in
      ``init.broadcast_bits``, codes and scales counted exactly, whatever the round wire dtype).
    - Resume (``resync_download_*``): the one-time tensors sent again to every client after a resume (the
      decoded bases, float32: the server keeps no codes).
    - Client evaluation (``evaluate_download_*``, Flower's ``flower.client-eval``): what each node is sent to
      evaluate; not in the round totals.
    """

    wire_dtype: str = "float32"
    upload_params: int = 0
    download_params: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    catchup_download_params: int = 0
    catchup_download_bytes: int = 0
    one_time_upload_bytes: int = 0
    one_time_download_bytes: int = 0
    one_time_upload_params: int = 0
    one_time_download_params: int = 0
    resync_download_params: int = 0
    resync_download_bytes: int = 0
    evaluate_download_params: int = 0
    evaluate_download_bytes: int = 0

    def record_round(self, downs: list[ClientDownload], ups: list[Size]) -> dict[str, int]:
        """Record one round: ``downs`` were sent (one per sampled client), ``ups`` arrived. Returns the row's
        per-client maxima and round totals."""
        down_sizes = [d.size(self.wire_dtype) for d in downs]
        catchup = [size_of(d.catchup, "float32") for d in downs]
        row = {
            "download_params_per_client": max((d.params for d in down_sizes), default=0),
            "download_bytes_per_client": max((d.bytes for d in down_sizes), default=0),
            "upload_params_per_client": max((u.params for u in ups), default=0),
            "upload_bytes_per_client": max((u.bytes for u in ups), default=0),
            "download_bytes_round": sum(d.bytes for d in down_sizes),
            "upload_bytes_round": sum(u.bytes for u in ups),
            "catchup_download_bytes_round": sum(c.bytes for c in catchup),
            "clients": len(ups),
        }
        self.download_params += sum(d.params for d in down_sizes)
        self.download_bytes += row["download_bytes_round"]
        self.catchup_download_params += sum(c.params for c in catchup)
        self.catchup_download_bytes += row["catchup_download_bytes_round"]
        self.upload_params += sum(u.params for u in ups)
        self.upload_bytes += row["upload_bytes_round"]
        return row

    def record_setup(self, init_upload: Size, one_time: Size, clients: int) -> dict[str, int]:
        """Record the setup: every client's init upload (``init_upload`` each) and the one-time broadcast to
        every client (``one_time`` each: the size of the message as sent, ``initialise_adapters``'s
        ``broadcast_size``). Returns the per-client figures (``Simulator.one_time``)."""
        down = one_time
        self.one_time_upload_params += init_upload.params * clients
        self.one_time_upload_bytes += init_upload.bytes * clients
        self.one_time_download_params += down.params * clients
        self.one_time_download_bytes += down.bytes * clients
        return {"init_upload_params_per_client": init_upload.params, "init_upload_bytes_per_client": init_upload.bytes,
                "broadcast_params_per_client": down.params, "broadcast_bytes_per_client": down.bytes}

    def record_resync(self, one_time: dict[str, Tensor], clients: int) -> None:
        """A resume: the one-time tensors (float32) go to every client again."""
        size = size_of(one_time, "float32")
        self.resync_download_params += size.params * clients
        self.resync_download_bytes += size.bytes * clients

    def record_evaluate(self, downs: list[ClientDownload]) -> None:
        for d in downs:
            size = d.size(self.wire_dtype)
            self.evaluate_download_params += size.params
            self.evaluate_download_bytes += size.bytes

    @property
    def total_bytes(self) -> int:
        """Everything that travelled: rounds, one-time costs, resume re-sends and client evaluation."""
        return (self.upload_bytes + self.download_bytes + self.one_time_upload_bytes + self.one_time_download_bytes
                + self.resync_download_bytes + self.evaluate_download_bytes)
