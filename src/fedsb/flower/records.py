"""Torch tensor dicts <-> Flower ``ArrayRecord``, with checks on everything received, and byte counts.

Flower stores each array as ``np.save`` bytes (no pickle). numpy has no bfloat16, so bf16 tensors travel as
their raw bits viewed as int16 (2 bytes each, bit-exact) and are turned back into float32 on receipt: the
rest of fedsb (validation, aggregation) only ever sees float32, exactly as ``fedsb.comm.accounting.to_wire`` models it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from fedsb.comm.accounting import WIRE_DTYPES, Size
from fedsb.errors import FedsbError

#: numpy dtype each wire dtype travels as (bfloat16: its bits, as int16).
CARRIER = {"float32": np.dtype("float32"), "float16": np.dtype("float16"), "bfloat16": np.dtype("int16")}
RAW_DTYPES = {np.dtype(d) for d in ("float32", "float16", "uint8", "int8", "int16", "int32", "int64")}
MAX_ARRAYS = 100_000
SECAGG_MASKED = "masked_params"  # flwr.common.secure_aggregation.secaggplus_constants.Key.MASKED_PARAMETERS


def to_record(tensors: dict[str, Tensor], wire_dtype: str = "float32") -> ArrayRecord:
    """Float tensors cast to ``wire_dtype`` (bf16 as an int16 view), others as they are."""
    if wire_dtype not in WIRE_DTYPES:
        raise FedsbError(f"wire dtype {wire_dtype!r} is not supported; choose one of: {', '.join(WIRE_DTYPES)}")
    rec = ArrayRecord()
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.to(WIRE_DTYPES[wire_dtype])
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
        rec[k] = Array(t.numpy())
    return rec


def array_record(content: RecordDict, key: str, what: str = "record") -> ArrayRecord:
    """``content[key]`` (a ``KeyError`` when absent), refused with :class:`FedsbError` unless it is an ArrayRecord.

    A sender picks the type of every record it sends; this is the check :func:`from_record` makes, done
    where the record is taken out of the message.
    """
    rec = content[key]
    if not isinstance(rec, ArrayRecord):
        raise FedsbError(f"{what}: expected an ArrayRecord, got {type(rec).__name__}")
    return rec


def record_int(record: ArrayRecord | MetricRecord | ConfigRecord, key: str, what: str = "record") -> int:
    """The integer ``record[key]`` of a received config or metric record (a ``KeyError`` when absent).

    Every integer fedsb sends (rounds, example counts, partition ids) travels as an ``int``; anything else
    (a float, a string, a bool, a list, an array) is refused with :class:`FedsbError` naming the key.
    """
    value = record[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise FedsbError(f"{what}: {key!r} is of type {type(value).__name__}, expected an integer; the sender's message is malformed")
    return value


def from_record(
    rec: ArrayRecord,
    wire_dtype: str = "float32",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    what: str = "record",
    raw: bool = False,
) -> dict[str, Tensor]:
    """Decode a received record into float32 tensors, refusing anything unexpected.

    Checks: only ``numpy.ndarray`` arrays of the agreed wire dtype, the expected shapes (when ``shapes`` names
    the tensor), finite values. The dtype and shape an ``Array`` declares are the sender's word, so they are
    checked again on the decoded array (its npy header), which is what the receiver uses. Raises
    :class:`FedsbError` naming the array and the problem. ``raw``: keep
    numeric dtypes as sent (LoRA-SB init messages: packed sign bits, float32 sums), which the init source's
    ``combine`` validates against the layer shapes.
    """
    if not isinstance(rec, ArrayRecord):
        raise FedsbError(f"{what}: expected an ArrayRecord, got {type(rec).__name__}")
    if len(rec) > MAX_ARRAYS:
        raise FedsbError(f"{what}: {len(rec)} arrays is more than the {MAX_ARRAYS} any fedsb message holds")
    carrier = CARRIER[wire_dtype]
    out: dict[str, Tensor] = {}
    for k, arr in rec.items():
        if arr.stype != "numpy.ndarray":
            raise FedsbError(f"{what}: array {k!r} has serialisation {arr.stype!r}; only numpy.ndarray is accepted")
        if raw:
            if np.dtype(arr.dtype) not in RAW_DTYPES:
                raise FedsbError(f"{what}: array {k!r} has dtype {arr.dtype}; expected one of {sorted(map(str, RAW_DTYPES))}")
        elif np.dtype(arr.dtype) != carrier:
            raise FedsbError(f"{what}: array {k!r} has dtype {arr.dtype}, expected {carrier} for wire dtype {wire_dtype}")
        want = None if shapes is None else shapes.get(k)
        if want is not None and tuple(arr.shape) != tuple(want):
            raise FedsbError(f"{what}: array {k!r} has shape {tuple(arr.shape)}, expected {tuple(want)}")
        try:
            a = arr.numpy()  # np.load(allow_pickle=False) inside Flower
        except (ValueError, OSError, EOFError) as e:
            raise FedsbError(f"{what}: array {k!r} is not a valid npy array ({e})") from None
        if not isinstance(a, np.ndarray):  # np.load also opens .npz archives
            raise FedsbError(f"{what}: array {k!r} holds a {type(a).__name__}, not one npy array")
        if a.dtype != np.dtype(arr.dtype) or tuple(a.shape) != tuple(arr.shape):
            raise FedsbError(f"{what}: array {k!r} decodes to {a.dtype} {tuple(a.shape)} but declares "
                             f"{arr.dtype} {tuple(arr.shape)}; the sender's record is malformed")
        t = torch.from_numpy(np.ascontiguousarray(a))
        if not raw:
            t = t.view(torch.bfloat16) if wire_dtype == "bfloat16" else t
            t = t.to(torch.float32)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FedsbError(f"{what}: array {k!r} contains NaN or Inf")
        out[k] = t
    return out


def array_payload_bytes(a: Array) -> int:
    """``numel x itemsize`` of one array; legacy (SecAgg+) arrays carry no dtype, so read their npy header."""
    try:
        return math.prod(a.shape) * np.dtype(a.dtype).itemsize
    except TypeError:
        buf = io.BytesIO(a.data)
        version = np.lib.format.read_magic(buf)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(buf)
        return math.prod(shape) * dtype.itemsize


def payload_bytes(rec: ArrayRecord) -> int:
    """Bytes of tensor data in a record (``numel x itemsize``), excluding npy headers and key names."""
    return sum(array_payload_bytes(a) for a in rec.values())


def record_size(rec: ArrayRecord) -> Size:
    """Parameters and tensor bytes of a received record, as the ledger counts them (``fedsb.comm.accounting.Size``)."""
    return Size(sum(math.prod(a.shape) for a in rec.values()), payload_bytes(rec))


def message_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content as Flower pushes it (unique objects: identical chunks count once)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(o.deflate()) for o in get_all_nested_objects(content).values())


@dataclass
class WireCount:
    """Bytes of one message: tensor data, Flower's ``count_bytes`` of its ArrayRecords, and the whole message."""

    payload: int
    record: int
    message: int

    @property
    def framing(self) -> int:
        return self.message - self.payload

    def as_dict(self) -> dict[str, int]:
        return {"payload_bytes": self.payload, "record_bytes": self.record, "message_bytes": self.message,
                "framing_bytes": self.framing}


def npy_payload_bytes(data: bytes) -> int:
    return array_payload_bytes(Array(dtype="", shape=(), stype="numpy.ndarray", data=data))


def count(content: RecordDict) -> WireCount:
    """Sizes of one message. SecAgg+ masked vectors (npy bytes in a ConfigRecord) count as payload too."""
    recs = list(content.array_records.values())
    payload = sum(payload_bytes(r) for r in recs)
    for rec in content.config_records.values():
        masked = rec.get(SECAGG_MASKED)
        if isinstance(masked, list):
            payload += sum(npy_payload_bytes(b) for b in masked if isinstance(b, bytes))
    return WireCount(payload, sum(r.count_bytes() for r in recs), message_bytes(content))


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
