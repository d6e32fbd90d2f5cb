"""The token-wise constrained objective of deep safety alignment, as pure tensor functions.

Qi et al. (arXiv:2406.05946, section 4.1) constrain every response token y_t of the fine-tuned
model pi_theta to stay close to the initial aligned model pi_ref:

    L = - sum_t (2 / beta_t) log sigmoid(beta_t * Delta_t),   Delta_t = log pi_theta(y_t|.) - log pi_ref(y_t|.)

whose gradient is - sum_t w_t grad log pi_theta(y_t) with w_t = 2 (1 - sigmoid(beta_t Delta_t))
(Appendix D.2). Like the reference code we train with that gradient form: the token NLL times the
detached weight, clamped at :data:`WEIGHT_FLOOR` so that a token whose probability already rose far
above the reference still gets a (small) gradient. The reported loss is therefore the weighted NLL,
not the value of L; :func:`constrained_objective` gives L itself (tests, diagnostics).

At Delta = 0 (theta = theta_ref) every w_t is exactly 1 and the gradient is SFT's; beta -> 0 gives
w_t -> 1 as well; w_t lies in [1e-3, 2] and decreases as Delta_t grows.

beta_t is indexed by the token's rank among the response tokens of its sequence (t = 1 is the first
label that is not -100), so padding side and prompt length do not shift the schedule. In a
multi-turn conversation the count runs on through later assistant turns (the reference has one
response per sequence); in a padding-free / packed row it restarts with each sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Lower clamp of the weights (the reference's ``torch.clamp(..., min=1e-3)``).
WEIGHT_FLOOR = 1e-3


def response_positions(mask: torch.Tensor, segment_starts: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each scored token among the scored tokens of its sequence; 0 where ``mask`` is False.

    Args:
        mask: ``[batch, len]`` bool, True on scored (label != -100) positions.
        segment_starts: ``[batch, len]`` bool, True where a new sequence starts inside a row
            (padding-free / packed batches); ``None`` when each row is one sequence.
    """
    counts = mask.long().cumsum(-1)
    if segment_starts is not None:
        # tokens counted before each segment starts, carried forward to the segment's positions
        before = torch.where(segment_starts, counts - mask.long(), torch.zeros_like(counts))
        counts = counts - before.cummax(-1).values
    return torch.where(mask, counts, torch.zeros_like(counts))


def beta_schedule(
    positions: torch.Tensor, beta: float, first_token_factor: float, bias_factor: float, bias_length: int
) -> torch.Tensor:
    """beta_t for response ranks ``positions`` (float32): ``beta * first_token_factor`` for t = 1,
    ``beta * bias_factor`` for 2 <= t <= ``bias_length``, ``beta`` after (and where t = 0)."""
    betas = torch.full(positions.shape, float(beta), dtype=torch.float32, device=positions.device)
    if bias_length > 0:
        betas = torch.where((positions >= 1) & (positions <= bias_length), beta * bias_factor, betas)
        betas = torch.where(positions == 1, beta * first_token_factor, betas)
    return betas


def token_weights(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """w_t = max(2 (1 - sigmoid(beta_t Delta_t)), 1e-3), detached (no gradient flows through the weight)."""
    delta = log_probs.detach().float() - ref_log_probs.float()
    return (2.0 * torch.sigmoid(-betas * delta)).clamp(min=WEIGHT_FLOOR)


def constrained_objective(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, betas: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token value of the exact objective, ``(2 / beta_t) * softplus(-beta_t Delta_t)``, 0 off ``mask``.

    Needs beta_t > 0. Its gradient equals that of ``-w_t * log_probs`` wherever the weight is above
    the floor (tested); we train with the latter.
    """
    delta = log_probs.float() - ref_log_probs.float()
    value = (2.0 / betas) * F.softplus(-betas * delta)
    return torch.where(mask, value, torch.zeros_like(value))
