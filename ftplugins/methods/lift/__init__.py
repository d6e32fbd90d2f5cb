"""LIFT: Low-rank Informed sparse Fine-Tuning (Liu et al., ICML 2025, arXiv:2506.00772).

Train only the "principal weights": in every Linear weight W (not embeddings, not lm_head), the k
entries where the rank-r_f approximation of W is largest in magnitude, k = (m + n) r by default (a
rank-r LoRA's parameter count) or a density; re-select them from the current weights every
``lift_interval`` steps. Everything else is frozen. Training runs on the shared sparse engine
(:mod:`ftplugins.sparse`); the artifact is a sparse delta W - W0 that ``ftplugins delta apply``
adds onto the base model. ``select`` below is the rule as a pure function.

Differences from the reference code (zihanghliu/LIFT), on purpose:

* Dense gradients are never kept for the model: a per-weight hook moves the selected entries of
  each gradient into a compact buffer as soon as autograd writes it (the reference masks a dense
  ``.grad`` for every weight, so its memory is not "on par with PEFT" as claimed; ours tracks k).
* Weight decay acts on the selected entries (the reference decays a temporary copy: a no-op).
* bf16/fp16 weights train through fp32 master copies of the selected entries.
* Gradient clipping uses the norm of the compact gradients (the trained entries), not of the
  masked dense gradient; the two are equal, the reference just pays for the dense one.
* The mask is stored as sorted int64 indices on the weight's device (the reference keeps masks on
  the CPU), and is saved in checkpoints, so a resumed run continues with the same mask.

This module imports no torch; the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import LiftOptions

STATE_KEY = "lift"


def select(weight: Any, rank: int = 128, k: int | None = None, density: float | None = None, **kwargs: Any) -> Any:
    """LIFT's boolean mask of a 2-D ``weight``; see :func:`ftplugins.methods.lift.selection.select`."""
    from .selection import select as _select

    return _select(weight, rank=rank, k=k, density=density, **kwargs)


class LiftPlugin(Plugin):
    name = "lift"
    summary = "LIFT: sparse fine-tuning of the largest entries of each weight's low-rank approximation"
    paper = ("Liu et al., LIFT the Veil for the Truth: Principal Weights Emerge after Rank Reduction for "
             "Reasoning-Focused Supervised Fine-Tuning, ICML 2025, arXiv:2506.00772")
    options = LiftOptions
    # Compact gradients are averaged by the engine itself (no DDP reducer); index masks over FSDP's
    # flattened shards or DeepSpeed's partitions are not supported.
    distributed = ("single", "ddp")

    @hookimpl
    def validate(self, run):
        args = run.args
        if args is not None and getattr(args, "fp16", False):
            raise FtpluginsError(
                "lift with fp16=True: fp16 mixed precision scales the loss and unscales .grad tensors, which the "
                "sparse engine replaces by compact gradients, so the scaler cannot work; use bf16=True or fp32 (an "
                "fp16 *model* is fine: it trains through fp32 master copies)."
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
            raise FtpluginsError("lift: create_optimizer ran before prepare_model; build the trainer with "
                                 "ftplugins.compose so that the hooks run in order")
        return build_optimizer(model, args, run.options_for(self), state["targets"])

    @hookimpl
    def post_train(self, run, trainer):
        options = run.options_for(self)
        if options.lift_save_delta:
            from .training import save_delta_of

            save_delta_of(trainer, options)


plugin = LiftPlugin()
