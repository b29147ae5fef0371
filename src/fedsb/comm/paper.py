"""Published architecture dimensions of the paper's models and their per-round communication.

No download: the dimensions are the public config values (hidden size, intermediate size, layers, attention
heads, KV heads, head dim). Counts use :func:`fedsb.comm.accounting.round_params`, the same formulas the simulator
reports, so the paper's figures double as a check of ``fedsb.comm.accounting``.

The paper quotes one number per method: parameters per client per round in the direction that dominates,
i.e. the download. For FedEx-LoRA it counts the factor form of the exact update (all ``k`` clients'
``A_i, B_i``, like FLoRA's stack); fedsb's FedEx-LoRA sends the dense ``d_in x d_out`` residual instead, which
:func:`round_traffic` reports. :func:`paper_figure` follows the paper's convention.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsb.comm.accounting import LayerDims, layer_round_params, round_params

LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ArchDims:
    """A decoder (or BERT encoder) block's shape, as published in the model's config."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int | None = None  # None = hidden / heads
    targets: tuple[str, ...] = LLM_TARGETS

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    def module_dims(self) -> dict[str, LayerDims]:
        """(d_out, d_in) of every adaptable projection of one block (``nn.Linear`` layout)."""
        q, kv, h, i = self.heads * self.hd, self.kv_heads * self.hd, self.hidden, self.intermediate
        return {
            "q_proj": LayerDims(q, h), "k_proj": LayerDims(kv, h), "v_proj": LayerDims(kv, h), "o_proj": LayerDims(h, q),
            "gate_proj": LayerDims(i, h), "up_proj": LayerDims(i, h), "down_proj": LayerDims(h, i),
            # BERT names
            "query": LayerDims(q, h), "key": LayerDims(kv, h), "value": LayerDims(kv, h),
        }

    def layer_dims(self) -> list[LayerDims]:
        """Every adapted layer of the model (targets x blocks)."""
        dims = self.module_dims()
        return [dims[t] for t in self.targets] * self.layers

    def target_params(self) -> int:
        """Parameters of the adapted weights (what a dense init-gradient upload sends)."""
        return sum(d.d_in * d.d_out for d in self.layer_dims())


# Public config.json values.
LLAMA_3_2_3B = ArchDims("Llama-3.2-3B", hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, head_dim=128)
MISTRAL_7B = ArchDims("Mistral-7B", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128)
GEMMA_2_9B = ArchDims("Gemma-2-9B", hidden=3584, intermediate=14336, layers=42, heads=16, kv_heads=8, head_dim=256)
# SNLI (DP) experiments: BERT-style classifier adapting query/value (DESIGN.md section 1), 3-way head.
BERT_BASE_CASED = ArchDims("bert-base-cased", hidden=768, intermediate=3072, layers=12, heads=12, kv_heads=12,
                           targets=("query", "value"))
BERT_HEAD_PARAMS = 768 * 3 + 3  # classifier: 768 -> 3 labels (+ bias); trained and sent by every method

PAPER_MODELS: dict[str, ArchDims] = {m.name: m for m in (LLAMA_3_2_3B, MISTRAL_7B, GEMMA_2_9B, BERT_BASE_CASED)}


@dataclass(frozen=True)
class PaperSetting:
    """One experiment of the paper: model, task, clients per round, Fed-SB ranks, baseline rank."""

    model: str
    task: str
    clients: int
    fedsb_ranks: tuple[int, ...]
    lora_rank: int
    head_params: int = 0


PAPER_SETTINGS = (
    PaperSetting("Llama-3.2-3B", "commonsense (8 sets)", 5, (120, 160, 200), 32),
    PaperSetting("Mistral-7B", "GSM8K", 25, (120, 160, 200), 32),
    PaperSetting("Gemma-2-9B", "MATH", 25, (120, 160, 200), 32),
    PaperSetting("bert-base-cased", "SNLI (DP)", 3, (32, 64), 32, BERT_HEAD_PARAMS),
)
METHODS = ("fed-sb", "fedit", "ffa-lora", "fedex-lora", "flora")


def round_traffic(model: str | ArchDims, method: str, rank: int, k: int, head_params: int = 0) -> tuple[int, int]:
    """(upload, download) parameters per client per round as fedsb sends them (FedEx-LoRA: dense residual)."""
    arch = PAPER_MODELS[model] if isinstance(model, str) else model
    return round_params(method, rank, arch.layer_dims(), k, head_params)


def paper_figure(model: str | ArchDims, method: str, rank: int, k: int, head_params: int = 0) -> int:
    """Parameters per client per round as the paper counts them: the download, with FedEx-LoRA's exact
    update in factor form (``k r (d_in + d_out)`` per layer, the same as FLoRA's stack)."""
    return round_traffic(model, "flora" if method == "fedex-lora" else method, rank, k, head_params)[1]


def fedex_factor_download(model: str | ArchDims, rank: int, k: int) -> int:
    """FedEx-LoRA's download if the residual were sent as all clients' factors instead of densely."""
    arch = PAPER_MODELS[model] if isinstance(model, str) else model
    return sum(layer_round_params("flora", rank, d.d_out, d.d_in, k)[1] for d in arch.layer_dims())


def one_time(model: str | ArchDims, method: str, rank: int, compressed_factor: int = 2) -> dict[str, int]:
    """One-time parameters per client, which the paper's per-round figures leave out.

    Fed-SB: the B/A broadcast ``r (d_in + d_out)`` per layer, and the init-gradient upload: dense
    (``d_in d_out`` per layer, the ``federated`` source) or a rank ``r' = compressed_factor * r`` factorisation
    (``r' (d_in + d_out)``); 0 with a ``public`` init. LoRA baselines: none (A is drawn from a shared seed).
    """
    arch = PAPER_MODELS[model] if isinstance(model, str) else model
    if method != "fed-sb":
        return {"broadcast": 0, "init_upload_dense": 0, "init_upload_compressed": 0}
    lora = sum(d.d_in + d.d_out for d in arch.layer_dims())
    return {
        "broadcast": rank * lora,
        "init_upload_dense": arch.target_params(),
        "init_upload_compressed": compressed_factor * rank * lora,
    }


def headline_ratio() -> float:
    """The paper's "up to 230x": FLoRA/FedEx-LoRA r=32, 25 clients vs Fed-SB r=200 on Gemma-2-9B."""
    return paper_figure("Gemma-2-9B", "flora", 32, 25) / paper_figure("Gemma-2-9B", "fed-sb", 200, 25)
