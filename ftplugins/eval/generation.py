"""Batched generation for the harnesses: n completions per prompt, left-padded batches, prompt text cut off.

One helper for every harness (MBPP pass@k, knowledge infusion, conjugate prompting) so that padding, sampling
and decoding are done one way. Prompts are raw text tokenized with the tokenizer's special tokens (apply a chat
template first for chat models). ``temperature=0`` is greedy decoding (then ``n`` must be 1: greedy samples would
all be the same, which would inflate pass@k).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 128,
                   temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8, seed: int | None = 0,
                   stop: Sequence[str] = (), logits_processor: Any = None) -> list[list[str]]:
    """``n`` completions (new text only, special tokens skipped, cut before the first ``stop`` string) per prompt.

    ``batch_size`` counts prompts per ``generate`` call; each call produces ``batch_size * n`` sequences.
    ``seed`` reseeds torch's global generator before sampling (reproducible samples); ``None`` leaves it alone."""
    import torch

    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise FtpluginsError(f"generate_texts: n={n}, batch_size={batch_size}, max_new_tokens={max_new_tokens}; "
                             "expected positive integers.")
    if temperature < 0:
        raise FtpluginsError(f"generate_texts: temperature={temperature}; expected >= 0 (0 is greedy).")
    if temperature == 0 and n > 1:
        raise FtpluginsError(f"generate_texts: n={n} samples with temperature 0 (greedy) would be {n} copies of one "
                             "completion; set a temperature > 0 (e.g. 0.8) or n=1.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise FtpluginsError("generate_texts: the tokenizer has neither a pad nor an EOS token; set "
                             "tokenizer.pad_token before generating.")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    results: list[list[str]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [list(tokenizer(p)["input_ids"]) for p in prompts[start:start + batch_size]]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            extra = {"logits_processor": logits_processor} if logits_processor is not None else {}
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     num_return_sequences=n, pad_token_id=pad_id, **sampling, **extra)
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            texts = [cut_at_stop(t, stop) for t in texts]
            results.extend(texts[i * n:(i + 1) * n] for i in range(len(rows)))
    finally:
        model.train(was_training)
    return results


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest of the ``stop`` strings."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
