"""The two pure pieces of Masked Thought: which input tokens to corrupt, and how often.

MFT (Chen et al., 2024, arXiv:2403.02178, §3) corrupts the *inputs* of the reasoning steps and
keeps the targets: the model still predicts every original response token, but from a context in
which some earlier steps are hidden. Nothing here knows about trainers; see ``collator.py``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def mask_response_tokens(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    ratio: float,
    generator: torch.Generator,
    *,
    mask_token_id: int | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each response input token with probability ``ratio``.

    Response positions are those with ``labels != -100``: TRL's SFT data puts -100 on the prompt
    and the padding and leaves the labels unshifted (the model shifts them), so the candidates are
    exactly the completion tokens, EOS included. Labels are not touched.

    Every candidate is masked independently (a Bernoulli draw each). The GSM8K trainer of the
    reference draws a count n ~ Binomial(n_resp, p) and then n positions without replacement; that
    is the same distribution over masked sets, drawn in one vectorised step.

    Exactly one of ``mask_token_id`` (the MetaMath variant) and ``vocab_size`` (a uniformly random
    id in ``[0, vocab_size)``, the GSM8K variant) must be given.

    Returns the new input ids (a new tensor) and the boolean mask of the chosen positions. A chosen
    position may keep its id when the random draw happens to equal it, as in the reference.
    """
    if (mask_token_id is None) == (vocab_size is None):
        raise ValueError("give exactly one of mask_token_id and vocab_size")
    draws = torch.rand(input_ids.shape, generator=generator, device=generator.device)
    masked = (labels != IGNORE_INDEX) & (draws.to(labels.device) < ratio)
    if mask_token_id is not None:
        replacement = torch.full_like(input_ids, mask_token_id)
    else:
        replacement = torch.randint(vocab_size, input_ids.shape, generator=generator, device=generator.device)
        replacement = replacement.to(device=input_ids.device, dtype=input_ids.dtype)
    return torch.where(masked, replacement, input_ids), masked


def ratio_at(step: int, max_steps: int, ratio: float, warmup: float) -> float:
    """The masking probability at optimizer step ``step`` (0-based) of ``max_steps``.

    p grows linearly from 0 at step 0 to ``ratio`` at ``warmup * max_steps`` and stays there;
    ``warmup == 0`` is a constant ``ratio``. The reference GSM8K trainer computes
    ``min(p_max, p_max * step / (max_steps * 2/3 + 1))``; we drop its ``+ 1`` (a guard against
    dividing by zero) so that p reaches p_max exactly at the end of the warm-up.
    """
    warmup_steps = warmup * max_steps
    if warmup_steps <= 0:
        return ratio
    return ratio * min(1.0, step / warmup_steps)
