"""LiST's meta re-weighting of unlabelled examples, and the weighted distillation loss it scales.

LiST (Wang et al., "LiST: Lite Prompted Self-training Makes Parameter-Efficient Few-shot Learners", Findings of NAACL
2022, arXiv:2110.06274; reference microsoft/LiST ``src/trainer.py``): the student is trained on unlabelled examples
against the teacher's soft labels, each example weighted by how much a step on it would lower the *labelled* loss.
One virtual SGD step θ' = θ − η ∇θ Σᵢ εᵢ lᵢ(θ) at ε = 0; wᵢ = max(0, −∂L_labelled(θ')/∂εᵢ), normalised to sum 1 (all
zero when no example helps). The virtual step is functional (``torch.func``): the real parameters and their ``.grad``
are never touched. For the first 60% of a session the weights are uniform (the reference's warm-up).

The sessions that call it per student step are in :mod:`.sessions`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad

Params = dict[str, torch.Tensor]


def meta_weights(params: Params, unlabelled_losses: Callable[[Params], torch.Tensor],
                 labelled_loss: Callable[[Params], torch.Tensor], lr: float) -> torch.Tensor:
    """Per-example weights ``[n]`` of the unlabelled batch: ≥ 0, summing to 1 unless all are 0.

    ``unlabelled_losses(params)`` returns the ``[n]`` per-example student losses and ``labelled_loss(params)`` the
    scalar labelled loss, both computed with ``torch.func.functional_call`` on ``params`` (trainable tensors only).
    """
    params = {name: p.detach() for name, p in params.items()}
    n = unlabelled_losses(params).shape[0]

    def labelled_after_virtual_step(eps: torch.Tensor) -> torch.Tensor:
        step = grad(lambda p: (eps * unlabelled_losses(p)).sum())(params)
        return labelled_loss({name: params[name] - lr * step[name] for name in params})

    eps = torch.zeros(n, device=next(iter(params.values())).device)
    weights = torch.clamp(-grad(labelled_after_virtual_step)(eps), min=0).detach()
    total = weights.sum()
    return weights / total if total > 0 else weights


def uniform_weights(n: int, device=None) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, device=device)


def reweighting_on(step_in_session: int, session_steps: int, warmup: float = 0.6) -> bool:
    """Meta weights only after the first ``warmup`` share of a session's steps (uniform before)."""
    return step_in_session >= warmup * session_steps


def weighted_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """Σᵢ wᵢ KL(p_T,ᵢ ‖ p_S,ᵢ) over the label distributions; the teacher gets no gradient."""
    return (weights * per_example_kl(student_logits, teacher_logits)).sum()


def per_example_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    teacher = teacher_logits.detach().float().log_softmax(-1)
    student = student_logits.float().log_softmax(-1)
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
