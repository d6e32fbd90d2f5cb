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
* ``lift_step_in_backward`` (opt-in) updates each weight inside the backward as its gradient arrives, so no
  compact gradient is kept until the step; with ``lift_save_delta false`` (no original values kept) the state is
  LoRA's 12 bytes per trained entry (needs ``max_grad_norm 0``, no gradient accumulation, one process or FSDP2;
  not DDP, whose gradients are averaged only at the step).
* The mask is stored as sorted int32 flat indices on the weight's device (the reference keeps masks on
  the CPU), and is saved in checkpoints, so a resumed run continues with the same mask.

This module imports no torch; the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.distributed_reasons import SPARSE_DEEPSPEED
from ftplugins.sparse.plugin import SparseMethodPlugin

from .options import LiftOptions


def select(weight: Any, rank: int = 128, k: int | None = None, density: float | None = None, **kwargs: Any) -> Any:
    """LIFT's boolean mask of a 2-D ``weight``; see :func:`ftplugins.methods.lift.selection.select`."""
    from .selection import select as _select

    return _select(weight, rank=rank, k=k, density=density, **kwargs)


class LiftPlugin(SparseMethodPlugin):
    name = "lift"
    summary = "LIFT: sparse fine-tuning of the largest entries of each weight's low-rank approximation"
    paper = ("Liu et al., LIFT the Veil for the Truth: Principal Weights Emerge after Rank Reduction for "
             "Reasoning-Focused Supervised Fine-Tuning, ICML 2025, arXiv:2506.00772")
    options = LiftOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains the largest entries of each weight's low-rank approximation",
        "optimizer": "steps them with its sparse AdamW",
    }
    # DDP: compact gradients are averaged by the engine itself (no DDP reducer). FSDP2: selection on the gathered
    # weight, each process keeps its rows' entries (ftplugins.sparse.shards). DeepSpeed's partitions: not supported.
    distributed = ("single", "ddp", "fsdp")
    distributed_refusals = {"deepspeed": SPARSE_DEEPSPEED}
    training_module = "ftplugins.methods.lift.training"


plugin = LiftPlugin()
