"""safetensors I/O: deterministic bytes (bit-identical resumed runs) and named errors for bad files."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from fedsb.errors import FedsbError
from fedsb.io.state_io import load_tensors, save_tensors


def test_same_tensors_and_metadata_give_the_same_bytes_in_any_order(tmp_path):
    t = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4)}
    meta = {f"k{i}": str(i) for i in range(12)}
    save_tensors(tmp_path / "x.safetensors", t, metadata=meta)
    save_tensors(tmp_path / "y.safetensors", dict(reversed(t.items())), metadata=dict(reversed(meta.items())))
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == meta
    back = load_tensors(tmp_path / "x.safetensors")
    assert torch.equal(back["b"], t["b"]) and torch.equal(back["a"], t["a"])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FedsbError, match="missing"):
        load_tensors(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x01" * 40)
    with pytest.raises(FedsbError, match="not a valid safetensors"):
        load_tensors(tmp_path / "bad.safetensors")
    save_tensors(tmp_path / "nan.safetensors", {"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(FedsbError, match="non-finite"):
        load_tensors(tmp_path / "nan.safetensors")
