"""SaRA: fine-tuning the small ("ineffective") weights (Hu et al., ICLR 2025, arXiv:2409.06633).

Train only the entries with |θ0| < τ of every weight of the Linear / Conv layers (not embeddings,
not the LM head); everything else is frozen bitwise. Training runs on the shared sparse engine
(:mod:`ftplugins.sparse`: compact gradients and Adam state for the selected entries only, which is
what the reference's "unstructured backprop" achieves); the artifact is a sparse delta W - W0.

* **Progressive stage.** After optimizer step T_p (``sara_progressive_step``; 0 = half the run) the
  mask becomes M' = M ∧ {|θ_t| < τ} ⊆ M: entries that grew past τ freeze at their learned value;
  Adam restarts (zero moments, bias correction from step 1), as the reference's memory-saving path
  restarts its optimizer. Unlike the reference, step T_p itself performs its update (the
  re-selection happens right after it), so no batch is wasted and the schedule is unchanged.
* **Low-rank regulariser.** Each step, one 2-D trained weight with min(dim) > ``sara_rank_min_dim``
  is drawn (seeded by the run seed and the optimizer step, so a resumed run draws the same) and
  λ·||Δ||_* with Δ = (θ - θ0) ⊙ M is added to the loss *of the trained values*: its (sub)gradient
  U Vᵀ (from a full SVD of Δ, singular values above a rank tolerance) restricted to M is added to
  the compact gradient before clipping. We penalise the update Δ, not θ ⊙ M (the paper's intent,
  a low-rank update); the reference's default path adds the term's gradient to Parameters that
  its optimizer never steps, a no-op we do not copy.
* **Signs.** The weights are never rewritten at init (the reference writes |v| into the model, so
  the first forward loses the sign of small negative weights): the first forward equals the base.

``select`` below is the selection rule as a pure function. This module imports no torch.
"""

from __future__ import annotations

from typing import Any

from ftplugins.distributed_reasons import SPARSE_DEEPSPEED
from ftplugins.plugin import hookimpl
from ftplugins.sparse.plugin import SparseMethodPlugin

from .options import SaraOptions


def select(weight: Any, threshold: float = 2e-3) -> Any:
    """SaRA's boolean mask of any ``weight``: ``|weight| < threshold``."""
    return weight.detach().abs() < threshold


class SaraPlugin(SparseMethodPlugin):
    name = "sara"
    summary = "SaRA: sparse fine-tuning of the weights with |θ0| < τ, progressive re-selection, low-rank penalty"
    paper = ("Hu et al., SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank "
             "Adaptation, ICLR 2025, arXiv:2409.06633")
    options = SaraOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains the entries with |θ0| < τ",
        "optimizer": "steps them with its sparse AdamW",
    }
    # FSDP2: the nuclear-norm term gathers θ - θ0 of its weight whole; the progressive stage re-selects among
    # each process's own rows (ftplugins.sparse.shards).
    distributed = ("single", "ddp", "fsdp")
    distributed_refusals = {"deepspeed": SPARSE_DEEPSPEED}
    training_module = "ftplugins.methods.sara.training"

    @hookimpl
    def callbacks(self, run):
        from .training import ProgressiveCallback

        return [ProgressiveCallback(run.options_for(self))]


plugin = SaraPlugin()
