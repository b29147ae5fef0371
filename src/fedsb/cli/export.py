"""``fedsb export RUN_DIR [--merged OUT] [--peft OUT]``: a run's adapter as a merged model or PEFT adapter."""

from __future__ import annotations

from pathlib import Path

from fedsb.config import from_dict, load_toml, validate
from fedsb.core.federation import Federation, build_federation
from fedsb.errors import FedsbError
from fedsb.io.export import export_merged, export_peft
from fedsb.io.state_io import load_tensors


def load_run(run_dir: str | Path) -> Federation:
    """Rebuild a run's model from its ``config.toml`` and load its final adapter state."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise FedsbError(f"run directory {str(rd)!r} not found; pass a directory written by `fedsb run`")
    cfg = validate(from_dict(load_toml(rd / "config.toml")))
    fed = build_federation(cfg)
    state = load_tensors(rd / "adapter_state.safetensors")
    residual = {k: v for k, v in state.items() if k.endswith(".residual")}
    adapter = {k: v for k, v in state.items() if not k.endswith(".residual")}
    expected = set(fed.adapted.get_state())
    if set(adapter) != expected:
        raise FedsbError(f"{rd}/adapter_state.safetensors does not match the model in its config.toml; was it edited?")
    try:
        fed.adapted.set_state(adapter)
    except (KeyError, ValueError) as e:
        raise FedsbError(f"{rd}/adapter_state.safetensors does not fit the model: {e}") from None
    fed.adapted.set_residual_state(residual)
    return fed


def export(run_dir: str, merged: str | None, peft: str | None) -> None:
    if not merged and not peft:
        raise FedsbError("nothing to export; pass --merged OUT and/or --peft OUT", 2)
    fed = load_run(run_dir)
    if peft:
        task_type = "SEQ_CLS" if fed.loaded.kind == "classification" else "CAUSAL_LM"
        print(f"PEFT adapter written to {export_peft(fed.adapted, peft, fed.loaded.source, task_type)}/")
    if merged:
        print(f"merged model written to {export_merged(fed.adapted, fed.loaded.tokenizer, merged)}/")
