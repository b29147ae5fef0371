"""Tensor dicts <-> ArrayRecord: exact round trips (bf16 via int16 bits), refusal of bad arrays, byte counts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsb.comm.accounting import payload_bytes as analytic_bytes
from fedsb.comm.accounting import to_wire
from fedsb.errors import FedsbError
from fedsb.flower.records import array_record, count, from_record, payload_bytes, record_int, to_record


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"layer.0.lora_R.weight": torch.randn(4, 4, generator=g), "head.weight": torch.randn(3, 8, generator=g)}


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16"])
def test_round_trip_matches_the_simulators_wire_model(wire: str) -> None:
    t = tensors()
    back = from_record(to_record(t, wire), wire)
    expect = to_wire(t, wire)
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == torch.float32
        assert torch.equal(back[k], expect[k])
    assert payload_bytes(to_record(t, wire)) == analytic_bytes(t, wire)


def test_bf16_halves_the_payload() -> None:
    t = tensors()
    assert payload_bytes(to_record(t, "bfloat16")) * 2 == payload_bytes(to_record(t, "float32"))


def test_rejects_wrong_dtype_shape_and_non_finite() -> None:
    t = tensors()
    with pytest.raises(FedsbError, match="dtype"):
        from_record(to_record(t, "float16"), "float32")
    with pytest.raises(FedsbError, match="shape"):
        from_record(to_record(t), "float32", shapes={"head.weight": (8, 3)})
    bad = dict(t)
    bad["head.weight"] = bad["head.weight"].clone()
    bad["head.weight"][0, 0] = float("nan")
    with pytest.raises(FedsbError, match="NaN"):
        from_record(to_record(bad))
    rec = ArrayRecord({"x": Array(dtype="float32", shape=(1,), stype="pickle", data=b"\x80\x04")})
    with pytest.raises(FedsbError, match="serialisation"):
        from_record(rec)


def test_record_int_takes_only_an_int() -> None:
    """Rounds, counts and partition ids from another party: a float, string, bool or list is refused, not rounded."""
    rec = ConfigRecord({"ok": 3, "float": 3.7, "str": "3", "bool": True, "list": [3]})
    assert record_int(rec, "ok") == 3 and record_int(MetricRecord({"n": 8}), "n") == 8
    for key in ("float", "str", "bool", "list"):
        with pytest.raises(FedsbError, match=f"setup reply: '{key}' is of type"):
            record_int(rec, key, "setup reply")
    with pytest.raises(FedsbError, match="is of type Array"):
        record_int(to_record(tensors()), "head.weight")
    with pytest.raises(KeyError):
        record_int(rec, "absent")


def test_array_record_refuses_another_record_type() -> None:
    content = RecordDict({"arrays": to_record(tensors()), "config": ConfigRecord({"arrays": 1})})
    assert isinstance(array_record(content, "arrays"), ArrayRecord)
    with pytest.raises(FedsbError, match="broadcast: expected an ArrayRecord, got ConfigRecord"):
        array_record(content, "config", "broadcast")
    with pytest.raises(KeyError):
        array_record(content, "absent")


def test_raw_mode_keeps_integer_init_messages() -> None:
    packed = {"layer.grad_signs": torch.tensor([1, 255, 3], dtype=torch.uint8)}
    back = from_record(to_record(packed), raw=True)
    assert back["layer.grad_signs"].dtype == torch.uint8 and torch.equal(back["layer.grad_signs"], packed["layer.grad_signs"])
    with pytest.raises(FedsbError, match="dtype"):
        from_record(to_record(packed))


def test_count_separates_payload_from_framing() -> None:
    t = tensors()
    content = RecordDict({"arrays": to_record(t), "config": ConfigRecord({"server-round": 1})})
    c = count(content)
    assert c.payload == analytic_bytes(t)
    assert c.record == to_record(t).count_bytes() > c.payload
    assert c.message > c.record and c.framing == c.message - c.payload


def test_count_reads_secagg_masked_vectors() -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 3), dtype=np.int64))
    content = RecordDict({"cfg": ConfigRecord({"masked_params": [buf.getvalue()]})})
    assert count(content).payload == 5 * 3 * 8


def lying_array(declared: np.ndarray, actual: np.ndarray) -> Array:
    """An Array whose declared dtype/shape are those of ``declared`` but whose npy bytes hold ``actual``."""
    buf = io.BytesIO()
    np.save(buf, actual, allow_pickle=False)
    return Array(dtype=str(declared.dtype), shape=tuple(declared.shape), stype="numpy.ndarray", data=buf.getvalue())


@pytest.mark.parametrize("actual", [
    np.zeros((64, 64), dtype=np.float32),  # another shape behind a declared (4, 4)
    np.zeros((4, 4), dtype=np.float64),  # another dtype behind a declared float32
    np.zeros((4, 4), dtype=">f4"),  # big-endian float32: the right size, the wrong numbers
])
def test_the_decoded_array_is_checked_not_only_what_the_sender_declares(actual: np.ndarray) -> None:
    declared = np.zeros((4, 4), dtype=np.float32)
    rec = ArrayRecord({"layer.residual": lying_array(declared, actual)})
    with pytest.raises(FedsbError, match="decodes to"):
        from_record(rec, "float32", shapes={"layer.residual": (4, 4)}, what="residual sync")
    with pytest.raises(FedsbError, match="decodes to"):
        from_record(rec, raw=True)

