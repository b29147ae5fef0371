"""Causal-LM instruction tuning: response-only loss, likelihood scoring and greedy generation.

Every sequence is ``render_prompt(prompt) + response + EOS``, prompt and response tokenised separately so
the boundary (and the loss mask) is exact and identical at training and evaluation. Batches are
*left*-padded with explicit position ids, so the responses end together at the right edge: the loss only
needs the logits of the last few positions (``logits_to_keep``), and generation can start right away.

Training losses: ``loss`` (non-private) averages over every response token of the batch; ``dp_loss``
(DP-SGD) averages each example over its own response tokens, then over examples, so one example's gradient
does not depend on its batch-mates' lengths or the batch size.

Evaluation (``eval.mode``):
- ``likelihood``: for each candidate answer, the sum of the log-probabilities of its tokens (EOS included,
  so a candidate that is a prefix of another, "10" vs "109", is not favoured); the prompt runs once and
  its KV cache is shared by all candidates;
- ``generate``: greedy decoding, batched, cut at stop strings, then the paper's answer extraction
  (:mod:`fedsb.tasks.answers`);
- ``auto``: likelihood when every example has candidates, generation otherwise.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from fedsb.errors import FedsbError
from fedsb.objectives.base import Objective
from fedsb.tasks.answers import is_correct
from fedsb.tasks.base import Example, TaskData
from fedsb.tasks.prompts import render_prompt, uses_chat_template

IGNORE = -100
STOP_STRINGS = ("### Instruction", "### Response", "### Input", "\n\n\n")
# Generation budget by answer type: label words are short; math solutions need room to reason.
MAX_NEW_TOKENS = {"number": 256, "exact": 32}
DEFAULT_NEW_TOKENS = 32


class Generates(Protocol):
    """A model with Hugging Face's ``generate`` (``GenerationMixin``), which ``nn.Module``'s types do not show."""

    def generate(self, **kwargs: Any) -> Tensor: ...


class CausalLMObjective(Objective):
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        device: torch.device | str = "cpu",
        eval_mode: str = "auto",
        task: TaskData | None = None,
        chat_template: str = "auto",
        max_new_tokens: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device(device)
        self.eval_mode = eval_mode
        self.task = task
        self.chat = uses_chat_template(tokenizer, chat_template)
        self.max_new_tokens = max_new_tokens
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise FedsbError("the tokenizer has no EOS (or SEP) token to end responses with; use a causal-LM tokenizer")
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        # Prepend BOS only where the tokenizer itself would (Llama-style); chat templates carry their own.
        bos = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        self.bos_id = int(bos) if (bos is not None and not self.chat and probe and probe[0] == bos) else None
        self._prompt_cache: dict[str, list[int]] = {}
        self._response_cache: dict[str, list[int]] = {}

    # --- tokenisation ------------------------------------------------------------------------------------
    def prompt_text(self, example: Example) -> str:
        """The exact text before the response (shared by training, scoring and generation)."""
        return render_prompt(self.tokenizer, example.text, self.chat)

    def prompt_ids(self, example: Example) -> list[int]:
        ids = self._prompt_cache.get(example.text)
        if ids is None:
            ids = self.tokenizer(self.prompt_text(example), add_special_tokens=False).input_ids
            if self.bos_id is not None:
                ids = [self.bos_id, *ids]
            self._prompt_cache[example.text] = ids
        return ids

    def response_ids(self, response: str) -> list[int]:
        """Tokens of a response followed by EOS."""
        ids = self._response_cache.get(response)
        if ids is None:
            ids = [*self.tokenizer(response, add_special_tokens=False).input_ids, self.eos_id]
            self._response_cache[response] = ids
        return ids

    def fit(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        """Cut to ``max_length``: drop the prompt's *start* first (its end leads into the response), then the
        response's tail; at least one prompt token stays so the first response token is predicted."""
        response = response[: max(1, self.max_length - 1)]
        room = self.max_length - len(response)
        return prompt[-room:] if len(prompt) > room else prompt, response

    def token_lengths(self, examples: list[Example]) -> list[int]:
        # ``fit`` drops the prompt's start first: what a cut loses is context, not the response. Tokenised here,
        # not through the caches, which would then hold every measured example for the whole run.
        kept = [e for e in examples if e.response is not None]
        if not kept:
            return []
        prompts = self.tokenizer([self.prompt_text(e) for e in kept], add_special_tokens=False).input_ids
        responses = self.tokenizer([str(e.response) for e in kept], add_special_tokens=False).input_ids
        bos = 1 if self.bos_id is not None else 0
        return [bos + len(p) + len(r) + 1 for p, r in zip(prompts, responses, strict=True)]  # + EOS

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` with labels -100 on the prompt: the loss covers the response and EOS only."""
        if example.response is None:
            raise FedsbError(f"example {example.meta.get('where', example.text[:40])!r} has no response to train on")
        prompt, response = self.fit(self.prompt_ids(example), self.response_ids(example.response))
        return prompt + response, [IGNORE] * len(prompt) + response

    def left_pad(self, seqs: list[list[int]], value: int) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, attention_mask)``."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), value, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids, mask

    @staticmethod
    def positions(mask: Tensor, offset: Tensor | None = None) -> Tensor:
        """Position ids that ignore left padding (needed for absolute-position models such as GPT-2)."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return pos if offset is None else pos + offset[:, None]

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        encoded = [self.encode(e) for e in examples]
        ids, mask = self.left_pad([s for s, _ in encoded], self.pad_id)
        labels, _ = self.left_pad([lab for _, lab in encoded], IGNORE)
        keep = max(sum(1 for t in lab if t != IGNORE) for _, lab in encoded) + 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "labels": labels.to(self.device), "keep": keep}

    # --- loss --------------------------------------------------------------------------------------------
    @staticmethod
    def _supports_keep(model: nn.Module) -> bool:
        fwd = getattr(model, "forward", None)
        try:
            return fwd is not None and "logits_to_keep" in inspect.signature(fwd).parameters
        except (TypeError, ValueError):
            return False

    def token_logprobs(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the label tokens and their mask, over the last ``keep - 1`` positions."""
        ids, mask, labels, keep = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["keep"]
        keep = min(keep, ids.shape[1])
        kw: dict[str, Any] = {"logits_to_keep": keep} if self._supports_keep(model) else {}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=self.positions(mask), **kw).logits
        logits = logits[:, -keep:-1].float()  # position t predicts token t+1
        target = labels[:, -(keep - 1):]
        valid = target != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return logp * valid, valid

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Mean negative log-likelihood per response token of the batch (EOS included): non-private training.

        Not for DP: example i's share of this mean depends on its batch-mates' token counts (see :meth:`dp_loss`).
        """
        logp, valid = self.token_logprobs(model, batch)
        return -logp.sum() / valid.sum().clamp(min=1)

    def example_losses(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Each example's mean negative log-likelihood over its own response tokens (EOS included)."""
        logp, valid = self.token_logprobs(model, batch)
        return -logp.sum(-1) / valid.sum(-1).clamp(min=1)

    # --- evaluation --------------------------------------------------------------------------------------
    def mode_for(self, examples: list[Example]) -> str:
        if self.eval_mode != "auto":
            if self.eval_mode == "likelihood" and any(not e.choices or e.label is None for e in examples):
                raise FedsbError("eval.mode = 'likelihood' needs candidate answers; this task is generative, use 'generate' or 'auto'")
            return self.eval_mode
        return "likelihood" if all(e.choices and e.label is not None for e in examples) else "generate"

    @torch.no_grad()
    def score_choices(self, model: nn.Module, examples: list[Example]) -> list[list[float]]:
        """Sum of log-probabilities of every candidate response (EOS included), per example.

        The prompts run once; their KV cache is repeated for each candidate, which then only costs its own
        few tokens.
        """
        prompts = [self.prompt_ids(e) for e in examples]
        cands = [[self.response_ids(c) for c in (e.choices or [])] for e in examples]
        prompts = [self.fit(p, max(cs, key=len))[0] for p, cs in zip(prompts, cands, strict=True)]
        ids, mask = self.left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        kw: dict[str, Any] = {"logits_to_keep": 1} if self._supports_keep(model) else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=self.positions(mask), use_cache=True, **kw)
        first = torch.log_softmax(out.logits[:, -1].float(), -1)
        owner = [i for i, cs in enumerate(cands) for _ in cs]
        flat = [c for cs in cands for c in cs]
        scores = torch.tensor([first[i, c[0]].item() for i, c in zip(owner, flat, strict=True)])
        if max(len(c) for c in flat) > 1:
            idx = torch.tensor(owner, device=self.device)
            cache = out.past_key_values
            cache.reorder_cache(idx)  # one copy of each prompt's cache per candidate
            rest = [c[:-1] for c in flat]  # inputs: every candidate token but the last
            width = max(len(r) for r in rest)
            inp = torch.full((len(rest), width), self.pad_id, dtype=torch.long)
            cmask = torch.zeros((len(rest), width), dtype=torch.long)
            for j, r in enumerate(rest):
                inp[j, : len(r)] = torch.tensor(r)
                cmask[j, : len(r)] = 1
            inp, cmask = inp.to(self.device), cmask.to(self.device)
            full_mask = torch.cat([mask[idx], cmask], dim=1)
            pos = self.positions(cmask, offset=mask[idx].sum(-1))
            logits = model(input_ids=inp, attention_mask=full_mask, position_ids=pos, past_key_values=cache).logits.float()
            logp = torch.log_softmax(logits, -1)
            for j, c in enumerate(flat):
                if len(c) > 1:
                    tgt = torch.tensor(c[1:], device=self.device)
                    scores[j] += logp[j, : len(c) - 1].gather(-1, tgt[:, None]).sum().item()
        out_scores: list[list[float]] = []
        k = 0
        for cs in cands:
            out_scores.append(scores[k : k + len(cs)].tolist())
            k += len(cs)
        return out_scores

    def new_tokens(self, examples: list[Example]) -> int:
        if self.max_new_tokens:
            return self.max_new_tokens
        return max(MAX_NEW_TOKENS.get(e.meta.get("answer_type", "exact"), DEFAULT_NEW_TOKENS) for e in examples)

    @staticmethod
    def cut(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
        """The generation up to the first stop string."""
        cut = len(text)
        for s in stops:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
        return text[:cut]

    @torch.no_grad()
    def generate(self, model: nn.Module, examples: list[Example], max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuations of the prompts (batched, left padding), cut at the stop strings."""
        prompts = [self.prompt_ids(e) for e in examples]
        budget = max_new_tokens or self.new_tokens(examples)
        room = max(1, self.max_length - budget)
        ids, mask = self.left_pad([p[-room:] for p in prompts], self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        eos = sorted({self.eos_id, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])})
        out = cast(Generates, model).generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False, num_beams=1,
            temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=self.pad_id,
            stop_strings=list(STOP_STRINGS), tokenizer=self.tokenizer,
        )
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [self.cut(t) for t in texts]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int, progress: bool = False,
                 desc: str = "eval") -> dict[str, float]:
        """``accuracy`` (over all examples) and ``loss``; when the examples come from more than one source
        (``meta["source"]``, a suite of data sets), also ``accuracy/<source>`` for each and ``accuracy_macro``,
        their unweighted mean (the paper's "average over the test sets")."""
        was_training = model.training
        model.eval()
        mode = self.mode_for(examples)
        # Batches of similar prompt lengths waste less compute on padding (a row's scores do not depend on its
        # batch-mates: left padding with explicit positions); hits are put back in the examples' order.
        order = sorted(range(len(examples)), key=lambda j: len(self.prompt_ids(examples[j])))
        ordered = [examples[j] for j in order]
        hits: list[int] = []  # per example of `ordered`
        loss_sum, loss_tokens = 0.0, 0
        try:
            for i in tqdm(range(0, len(ordered), batch_size), desc=desc, leave=False, disable=not progress, unit="batch"):
                chunk = ordered[i : i + batch_size]
                if mode == "likelihood":
                    for e, s in zip(chunk, self.score_choices(model, chunk), strict=True):
                        assert e.choices is not None and e.label is not None
                        hits.append(int(max(range(len(s)), key=s.__getitem__) == e.label))
                        loss_sum -= s[e.label]
                        loss_tokens += len(self.response_ids(e.choices[e.label]))
                else:
                    for e, g in zip(chunk, self.generate(model, chunk), strict=True):
                        hits.append(int(is_correct(g, e.answer or e.response or "", e.meta.get("answer_type", "exact"))))
                    with_resp = [e for e in chunk if e.response is not None]
                    if with_resp:
                        logp, valid = self.token_logprobs(model, self.collate(with_resp))
                        loss_sum -= logp.sum().item()
                        loss_tokens += int(valid.sum().item())
        finally:
            model.train(was_training)
        n = max(len(examples), 1)
        metrics = {"accuracy": sum(hits) / n}
        if loss_tokens:
            metrics["loss"] = loss_sum / loss_tokens
        metrics.update(per_source_accuracy(ordered, hits))
        return metrics


def per_source_accuracy(examples: list[Example], hits: list[int]) -> dict[str, float]:
    """``accuracy/<source>`` per source and their unweighted mean ``accuracy_macro``; empty unless the examples
    come from at least two sources (examples without one count as the source ``unknown``)."""
    by: dict[str, list[int]] = {}
    for e, h in zip(examples, hits, strict=True):
        by.setdefault(e.meta.get("source", "unknown"), []).append(h)
    if len(by) < 2:
        return {}
    out = {f"accuracy/{s}": sum(v) / len(v) for s, v in sorted(by.items())}
    out["accuracy_macro"] = sum(out.values()) / len(by)
    return out
