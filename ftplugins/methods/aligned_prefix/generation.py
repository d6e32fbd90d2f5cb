"""Two-stage decoding: the aligned model writes k response tokens, the fine-tuned model continues.

Stage 1 (prefix): the prompts are left-padded into one batch and ``aligned.generate`` runs for at
most k new tokens (greedy unless ``generate_kwargs`` say otherwise). With ``aligned_model=None`` and
a PEFT ``model``, the prefix is written by ``model`` inside ``model.disable_adapter()``: the base
weights, without a second copy. A non-empty ``forced`` string replaces stage 1 with fixed tokens.

Stage 2 (continuation): each prompt's own tokens + its prefix (cut after an EOS) are left-padded
again and ``model.generate`` continues for the rest of the budget (``max_new_tokens`` counts prefix +
continuation). Rows whose prefix already ended with EOS are not continued. With k=0 stage 2 sees
exactly the batch plain decoding sees, so k=0 is ``model.generate`` token for token.

Prompts are raw text, tokenized with the tokenizer's special tokens (apply a chat template first for
chat models). The tokenizer's ``padding_side`` is left as the caller set it (we pad by hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

DEFAULT_MAX_NEW_TOKENS = 64


def generate(aligned_model: Any, model: Any, tokenizer: Any, prompts: Sequence[str], k: int = 15, *,
             forced: str = "", **generate_kwargs: Any) -> list[str]:
    """Decoded responses (prefix + continuation, special tokens skipped), one per prompt."""
    ids = generate_ids(aligned_model, model, tokenizer, prompts, k=k, forced=forced, **generate_kwargs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def generate_ids(aligned_model: Any, model: Any, tokenizer: Any, prompts: Sequence[str], k: int = 15, *,
                 forced: str = "", **generate_kwargs: Any) -> list[list[int]]:
    """Response token ids (prefix + continuation; EOS kept when produced; no padding), one list per prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if k < 0:
        raise FtpluginsError(f"aligned_prefix: k={k!r}; expected a number of prefix tokens >= 0.")
    budget = int(generate_kwargs.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    for key in ("input_ids", "attention_mask", "max_length"):
        if key in generate_kwargs:
            raise FtpluginsError(
                f"aligned_prefix.generate: {key!r} is set by the helper (prompts are tokenized here and "
                "max_new_tokens bounds prefix + continuation); drop it from generate_kwargs."
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]

    if forced:
        fixed = list(tokenizer(forced, add_special_tokens=False)["input_ids"])[:budget]
        prefixes = [list(fixed) for _ in prompt_ids]
    elif k == 0 or budget == 0:
        prefixes = [[] for _ in prompt_ids]
    else:
        writer, context = _prefix_writer(aligned_model, model)
        with context:
            prefixes = _decode(writer, prompt_ids, min(k, budget), pad_id, eos_ids, generate_kwargs)

    done = [bool(p) and p[-1] in eos_ids for p in prefixes]
    todo = [i for i, d in enumerate(done) if not d]
    continuations: dict[int, list[int]] = {}
    # One budget for the batch: the shortest remaining (all prefixes have the same length unless one ended).
    remaining = budget - max((len(prefixes[i]) for i in todo), default=0)
    if todo and remaining > 0:
        outs = _decode(model, [prompt_ids[i] + prefixes[i] for i in todo], remaining, pad_id, eos_ids,
                       generate_kwargs)
        continuations = dict(zip(todo, outs))
    return [prefixes[i] + continuations.get(i, []) for i in range(len(prompt_ids))]


def _prefix_writer(aligned_model: Any, model: Any):
    """(the model that writes the prefix, the context to write it in)."""
    import contextlib

    if aligned_model is not None:
        return aligned_model, contextlib.nullcontext()
    if not hasattr(model, "disable_adapter"):
        raise FtpluginsError(
            f"aligned_prefix.generate: aligned_model=None needs a PEFT model (base + adapter) so the prefix can be "
            f"written with the adapter disabled, but model is a {type(model).__name__}; pass the aligned model, "
            "or load the fine-tuned adapter with peft.PeftModel.from_pretrained(base, ADAPTER_DIR)."
        )
    return model, model.disable_adapter()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return {int(i) for i in ids if i is not None}


def _decode(model: Any, rows: list[list[int]], max_new: int, pad_id: int, eos_ids: set[int],
            generate_kwargs: dict) -> list[list[int]]:
    """``model.generate`` on left-padded ``rows``; the new tokens of each row, cut after its first EOS."""
    import torch

    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    kwargs = {"do_sample": False, "pad_token_id": pad_id, **generate_kwargs}
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, **kwargs)
    new = out[:, width:].tolist()
    return [_cut_after_eos(r, eos_ids) for r in new]


def _cut_after_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens
