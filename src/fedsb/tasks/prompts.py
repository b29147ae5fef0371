"""The one prompt template, used byte-for-byte identically for training and evaluation.

A task loader turns each example into an Alpaca-style prompt once (:func:`alpaca_prompt`); the causal-LM
objective then renders that text the same way for the loss, for likelihood scoring and for generation
(:func:`render_prompt`). The reference research code built its training prompt from an indented
triple-quoted string that the evaluation prompt lacked, so the model was scored on a prompt it never saw;
here there is a single code path, and tests compare the bytes.

Chat models: when the tokenizer has a chat template (instruct models such as SmolLM2-135M-Instruct) and
``task.chat_template`` is ``auto`` or ``on``, the Alpaca text is sent as the single user turn and the model
answers in the assistant turn, which is the format an instruct model was tuned on. Base models (no chat
template, as the paper's Llama/Mistral/Gemma base checkpoints) get the plain Alpaca text.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from fedsb.errors import FedsbError

HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
HEADER_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
CHAT_MODES = ("auto", "on", "off")


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt, ending with ``### Response:\\n`` so the response follows directly."""
    instruction = instruction.strip()
    input_text = (input_text or "").strip()
    if input_text:
        return f"{HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"{HEADER_NO_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, mode: str = "auto") -> bool:
    if mode not in CHAT_MODES:
        raise FedsbError(f"task.chat_template = {mode!r} is not valid; choose one of: {', '.join(CHAT_MODES)}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise FedsbError("task.chat_template = 'on' but the tokenizer has no chat template; use 'auto' or 'off'")
    return has and mode != "off"


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> str:
    """The exact text the model reads before its response (train, likelihood scoring and generation)."""
    if not chat:
        return prompt
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)  # tokenize=False returns the text (transformers' return type covers every mode)
    return text
