"""PSO's two offline losses as pure functions of per-sample denoising errors e(x) (C §5).

``e`` is the per-sample mean squared error of the denoiser's prediction (σ⁻²‖x̂₀ - x₀‖² = ε-MSE for ε-prediction);
``pos`` is the target (preferred) image, ``neg`` the model's own reference sample, both under the same ε and t.
"""

from __future__ import annotations

from typing import Any


def pso_margin(e_pos: Any, e_neg: Any, ref_pos: Any, ref_neg: Any, beta: float, neg_factor: float) -> Any:
    """β(Δ_ref - Δ_θ) with Δ = e(x⁺) - λ e(x⁻): positive when θ fits the target better, relative to its own
    samples, than the reference does."""
    return beta * ((ref_pos - neg_factor * ref_neg) - (e_pos - neg_factor * e_neg))


def pso_loss(e_pos: Any, e_neg: Any, ref_pos: Any, ref_neg: Any, beta: float, neg_factor: float) -> tuple[Any, Any]:
    """-log σ(margin), averaged over the batch (log 2 when θ = θ_ref); returns (loss, margin)."""
    import torch.nn.functional as F

    margin = pso_margin(e_pos, e_neg, ref_pos, ref_neg, beta, neg_factor)
    return -F.logsigmoid(margin).mean(), margin


def pso_db_loss(e_pos: Any, e_neg: Any, beta: float, neg_factor: float, reference_weight: float) -> tuple[Any, Any]:
    """The released script's form: max(0, 1 + β(e(x⁺) - λ e(x⁻))) + w·e(x⁻), no reference model; returns (loss,
    the hinge's argument's negation, a margin comparable in sign to :func:`pso_margin`)."""
    import torch

    inside = beta * (e_pos - neg_factor * e_neg)
    loss = torch.relu(1 + inside) + reference_weight * e_neg
    return loss.mean(), -inside
