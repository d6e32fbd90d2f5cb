"""Contrastive generative exploration (CGE): decode what the fine-tuned model knows and its base does not.

CGE (arXiv:2410.14765; reference code lgduu/cge, model_distill.py) is contrastive decoding with the fine-tuned
model as the expert and the pre-trained model as the amateur. At each step, for every token w::

    s(w) = log p_FT(w | x<t) - γ · log p_PT(w | x<t)    if p_FT(w) >= α · max_v p_FT(v)     (the plausibility head)
    s(w) = -inf                                          otherwise

Defaults from the reference code: α = 0.1, γ = 1. Greedy decoding picks the head token with the largest contrast;
beam search / sampling work over these scores as over any logits (the reference uses ``num_beams=4,
do_sample=True``). With FT = PT and γ = 1 every head token scores 0: the processor is the plausibility mask alone.

* :class:`ContrastiveLogitsProcessor` -- a ``transformers.LogitsProcessor`` holding the base model; pass it to the
  fine-tuned model's ``generate(logits_processor=[...])``. The base runs with its own KV cache while the
  sequences only grow (greedy, sampling); when beams reorder the rows it recomputes from the whole sequence.
* :class:`AdapterDisabled` -- the base of a PEFT model without a second copy: the same model with its adapter
  disabled (for the processor, or for any harness that wants "the base").
* :func:`contrastive_generate` -- prompts in, texts out, for a model pair or a PEFT model (base = adapter disabled).
* CLI: ``ftplugins generate --contrastive --model FT --base PT --prompt ...`` (or ``--adapter DIR`` instead of
  ``--base``).

A model pair must share its tokenizer (same vocabulary and special tokens) and output width; otherwise the
token-by-token contrast is meaningless and is refused. The iterative variant (one NLL step on PT after each
generated example) is :func:`ftplugins.tools.cge_explore.explore`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from ftplugins.errors import FtpluginsError


def check_same_tokenizer(tokenizer: Any, other: Any, what: str = "contrastive") -> None:
    """Refuse two tokenizers that do not map text to the same ids (vocabulary or special tokens differ)."""
    if tokenizer is other:
        return
    vocab, other_vocab = tokenizer.get_vocab(), other.get_vocab()
    if vocab != other_vocab:
        diff = sorted(set(vocab.items()) ^ set(other_vocab.items()), key=str)[:3]
        raise FtpluginsError(
            f"{what}: the two models' tokenizers differ ({len(vocab)} vs {len(other_vocab)} tokens; e.g. "
            f"{diff}); a token-by-token contrast needs one tokenizer: use a base model and its own fine-tune.")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) != getattr(other, name, None):
            raise FtpluginsError(f"{what}: the tokenizers' {name} differ ({getattr(tokenizer, name, None)} vs "
                                 f"{getattr(other, name, None)}); give both models the same tokenizer.")


class AdapterDisabled(torch.nn.Module):
    """A PEFT model seen with its adapter disabled: calls and ``generate`` run inside ``disable_adapter()``."""

    def __init__(self, peft_model: Any):
        super().__init__()
        if not hasattr(peft_model, "disable_adapter"):
            raise FtpluginsError(
                f"the base of a base + adapter pair is the PEFT model with its adapter disabled, but the model is a "
                f"{type(peft_model).__name__} without disable_adapter(); load the adapter with "
                "ftplugins.load_adapter(base, ADAPTER_DIR) or pass the base model itself.")
        self.peft_model = peft_model

    @property
    def config(self):
        return self.peft_model.config

    def forward(self, *args: Any, **kwargs: Any):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)


class ContrastiveLogitsProcessor(LogitsProcessor):
    """``log p_FT - γ log p_PT`` inside the α-plausibility head of the fine-tuned model, ``-inf`` outside.

    ``scores`` are the fine-tuned model's next-token logits (or log-probs: they are log-softmaxed again);
    ``base_model`` is called on the same ids. ``attention_mask``: the prompts' mask when they are left-padded
    (rows expanded by beams or ``num_return_sequences`` are matched); generated tokens always count."""

    def __init__(self, base_model: Any, alpha: float = 0.1, gamma: float = 1.0, attention_mask: Any = None,
                 use_cache: bool = True):
        if not 0.0 <= alpha <= 1.0:
            raise FtpluginsError(f"contrastive: alpha={alpha!r}; expected a plausibility cutoff in [0, 1] "
                                 "(the reference code's 0.1).")
        if not math.isfinite(gamma):
            raise FtpluginsError(f"contrastive: gamma={gamma!r}; expected a finite weight of the base model (1.0).")
        self.base_model, self.alpha, self.gamma, self.use_cache = base_model, alpha, gamma, use_cache
        self.attention_mask = attention_mask
        self._past, self._seen = None, None
        target = getattr(base_model, "peft_model", base_model)
        target = target.get_base_model() if hasattr(target, "get_base_model") else target
        try:
            params = inspect.signature(target.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_positions = "position_ids" in params
        # transformers 5.x renamed past_key_values to cache (argument and output); take whichever this model has.
        self._cache_name = "cache" if "cache" in params else "past_key_values"

    def reset(self) -> None:
        """Forget the base model's cache (call between ``generate`` calls with new prompts)."""
        self._past, self._seen = None, None

    def _mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        full = torch.ones_like(input_ids)
        if self.attention_mask is None:
            return full
        prompt = self.attention_mask.to(input_ids.device)
        if input_ids.shape[0] != prompt.shape[0]:
            if input_ids.shape[0] % prompt.shape[0]:
                raise FtpluginsError(f"contrastive: {input_ids.shape[0]} rows for a prompt mask of "
                                     f"{prompt.shape[0]} rows; pass the attention mask of the prompts given to "
                                     "generate.")
            prompt = prompt.repeat_interleave(input_ids.shape[0] // prompt.shape[0], dim=0)
        full[:, :prompt.shape[1]] = prompt
        return full

    @torch.no_grad()
    def base_log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log p_PT(· | input_ids) at the last position, one row per sequence."""
        mask = self._mask(input_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        reuse = (self.use_cache and self._past is not None and self._seen is not None
                 and input_ids.shape[1] == self._seen.shape[1] + 1 and torch.equal(input_ids[:, :-1], self._seen))
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": self.use_cache}
        if reuse:
            kwargs.update({"input_ids": input_ids[:, -1:], self._cache_name: self._past})
            if self._takes_positions:
                kwargs["position_ids"] = positions[:, -1:]
        else:
            kwargs["input_ids"] = input_ids
            if self._takes_positions:
                kwargs["position_ids"] = positions
        out = self.base_model(**kwargs)
        if self.use_cache:
            self._past, self._seen = getattr(out, self._cache_name, None), input_ids.clone()
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_ft = torch.log_softmax(scores.float(), dim=-1)
        log_pt = self.base_log_probs(input_ids)
        if log_pt.shape[-1] != log_ft.shape[-1]:
            raise FtpluginsError(f"contrastive: the base model scores {log_pt.shape[-1]} tokens and the fine-tuned "
                                 f"model {log_ft.shape[-1]}; the pair must share one vocabulary.")
        head = plausibility_head(log_ft, self.alpha)
        contrast = log_ft - self.gamma * log_pt
        return contrast.masked_fill(~head, float("-inf")).to(scores.dtype)


def plausibility_head(log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """V_head = {w : p(w) >= α · max p}, computed in log space (α = 0 keeps every token)."""
    if alpha <= 0:
        return torch.ones_like(log_probs, dtype=torch.bool)
    return log_probs >= log_probs.max(dim=-1, keepdim=True).values + math.log(alpha)


def contrastive_generate(model: Any, tokenizer: Any, prompts: Sequence[str], base_model: Any = None,
                         **kwargs: Any) -> list[str]:
    """Contrastive completions of ``prompts`` (new text only, special tokens skipped); arguments as
    :func:`contrastive_generate_ids`."""
    ids = contrastive_generate_ids(model, tokenizer, prompts, base_model, **kwargs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def contrastive_generate_ids(model: Any, tokenizer: Any, prompts: Sequence[str], base_model: Any = None, *,
                             base_tokenizer: Any = None, alpha: float = 0.1, gamma: float = 1.0,
                             max_new_tokens: int = 64, batch_size: int = 8, num_beams: int = 1,
                             do_sample: bool = False, use_cache: bool = True,
                             **generate_kwargs: Any) -> list[list[int]]:
    """The new token ids (padding included after an early end) of each prompt's contrastive completion.

    ``base_model=None`` with a PEFT ``model``: the base is ``model`` with its adapter disabled. ``base_tokenizer``:
    checked against ``tokenizer`` when given. ``num_beams`` / ``do_sample`` / ``generate_kwargs`` go to
    ``model.generate`` (greedy by default)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if base_model is None:
        base_model = AdapterDisabled(model)
    else:
        if base_tokenizer is not None:
            check_same_tokenizer(tokenizer, base_tokenizer)
        sizes = [getattr(getattr(m, "config", None), "vocab_size", None) for m in (model, base_model)]
        if None not in sizes and sizes[0] != sizes[1]:
            raise FtpluginsError(f"contrastive: the fine-tuned model has {sizes[0]} output tokens and the base "
                                 f"{sizes[1]}; a token-by-token contrast needs one vocabulary (the same tokenizer).")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    new_ids: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [list(tokenizer(p)["input_ids"]) for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        processor = ContrastiveLogitsProcessor(base_model, alpha, gamma, attention_mask=mask, use_cache=use_cache)
        sampling = {} if do_sample else {"temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 logits_processor=[processor], num_beams=num_beams, do_sample=do_sample,
                                 pad_token_id=pad_id, **sampling, **generate_kwargs)
        new_ids += out[:, width:].tolist()
    return new_ids
