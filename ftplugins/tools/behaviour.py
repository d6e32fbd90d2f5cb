"""How a causal LM behaves on a set of texts, measured against its base: mean token loss and mean KL(base ‖ model).

Used by the probe/prune analysis to tell whether pruning or reverse fine-tuning brought the pre-trained behaviour
back (KL 0 = the base's next-token distributions exactly). Both only read the models (``no_grad``, eval mode, the
previous training mode restored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def evaluating(*models: Any) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def batches(tokenizer: Any, texts: Sequence[str], device: Any, batch_size: int = 16, max_length: int = 256):
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length)
        yield batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _next_token_log_probs(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)


def lm_loss(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> float:
    """Mean next-token negative log-likelihood over the real (unpadded) tokens of ``texts``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model):
        for ids, mask in batches(tokenizer, texts, device, batch_size):
            log_probs = _next_token_log_probs(model, ids, mask)
            targets, keep = ids[:, 1:], mask[:, 1:].bool()
            picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total -= float(picked[keep].sum())
            count += int(keep.sum())
    return total / max(count, 1)


def kl_to_base(model: Any, base: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> float:
    """Mean over the real next-token positions of ``KL(p_base ‖ p_model)``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model, base):
        for ids, mask in batches(tokenizer, texts, device, batch_size):
            mine = _next_token_log_probs(model, ids, mask)
            theirs = _next_token_log_probs(base, ids.to(next(base.parameters()).device),
                                           mask.to(next(base.parameters()).device)).to(mine.device)
            kl = (theirs.exp() * (theirs - mine)).sum(-1)
            keep = mask[:, 1:].bool()
            total += float(kl[keep].sum())
            count += int(keep.sum())
    return total / max(count, 1)
