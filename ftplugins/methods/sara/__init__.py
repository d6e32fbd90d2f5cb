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

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import SaraOptions

STATE_KEY = "sara"


def select(weight: Any, threshold: float = 2e-3) -> Any:
    """SaRA's boolean mask of any ``weight``: ``|weight| < threshold``."""
    return weight.detach().abs() < threshold


class SaraPlugin(Plugin):
    name = "sara"
    summary = "SaRA: sparse fine-tuning of the weights with |θ0| < τ, progressive re-selection, low-rank penalty"
    paper = ("Hu et al., SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank "
             "Adaptation, ICLR 2025, arXiv:2409.06633")
    options = SaraOptions
    distributed = ("single", "ddp")

    @hookimpl
    def validate(self, run):
        args = run.args
        if args is not None and getattr(args, "fp16", False):
            raise FtpluginsError(
                "sara with fp16=True: fp16 mixed precision scales the loss and unscales .grad tensors, which the "
                "sparse engine replaces by compact gradients; use bf16=True or fp32."
            )

    @hookimpl
    def trainer_mixins(self, run):
        from ftplugins.sparse.trainer import SparseTrainerMixin

        return [SparseTrainerMixin]

    @hookimpl
    def prepare_model(self, run, model):
        from .training import prepare

        run.state[STATE_KEY] = {"targets": prepare(model)}
        return model

    @hookimpl
    def create_optimizer(self, run, model, args):
        from .training import build_optimizer

        state = run.state.get(STATE_KEY)
        if state is None:
            raise FtpluginsError("sara: create_optimizer ran before prepare_model; build the trainer with "
                                 "ftplugins.compose so that the hooks run in order")
        return build_optimizer(model, args, run.options_for(self), state["targets"])

    @hookimpl
    def callbacks(self, run):
        from .training import ProgressiveCallback

        return [ProgressiveCallback(run.options_for(self))]

    @hookimpl
    def post_train(self, run, trainer):
        options = run.options_for(self)
        if options.sara_save_delta:
            from .training import save_delta_of

            save_delta_of(trainer, options)


plugin = SaraPlugin()
