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
B/A broadcast ``r (d_in + d_out)`` per layer and the init-gradient upload (``d_in d_out`` per layer for
the dense federated init).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    up = down = head_params
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


@dataclass
class CommLedger:
    """Running per-client totals of what actually travelled (parameters and bytes)."""

    wire_dtype: str = "float32"
    upload_params: int = 0
    download_params: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    one_time_upload_bytes: int = 0
    one_time_download_bytes: int = 0
    one_time_upload_params: int = 0
    one_time_download_params: int = 0

    def record_round(self, down: dict[str, Tensor], ups: list[dict[str, Tensor]]) -> dict[str, int]:
        """Record one round: every sampled client received ``down`` and sent one of ``ups``."""
        row = {
            "download_params_per_client": payload_params(down),
            "download_bytes_per_client": payload_bytes(down, self.wire_dtype),
            "upload_params_per_client": max((payload_params(u) for u in ups), default=0),
            "upload_bytes_per_client": max((payload_bytes(u, self.wire_dtype) for u in ups), default=0),
            "clients": len(ups),
        }
        self.download_params += row["download_params_per_client"] * len(ups)
        self.download_bytes += row["download_bytes_per_client"] * len(ups)
        self.upload_params += sum(payload_params(u) for u in ups)
        self.upload_bytes += sum(payload_bytes(u, self.wire_dtype) for u in ups)
        return row

    def record_one_time(self, upload_bytes: int, download_bytes: int, upload_params: int, download_params: int) -> None:
        self.one_time_upload_bytes += upload_bytes
        self.one_time_download_bytes += download_bytes
        self.one_time_upload_params += upload_params
        self.one_time_download_params += download_params
