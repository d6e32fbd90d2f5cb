"""Grafting: skill localization by model grafting (Panigrahi et al., ICML 2023, arXiv:2302.06600).

After fine-tuning θ_pre → θ_ft, grafting finds a tiny region (≈0.01% of the entries in the paper) such
that θ_pre with only that region's fine-tuned values, θ_pre + γ⊙(θ_ft - θ_pre) with a binary γ,
recovers most of the fine-tuned model's performance. :func:`graft` is the algorithm on any pair of
models (see :mod:`ftplugins.methods.graft.grafting`); the plugin runs it as a ``post_train`` step of
a trainer run:

* ``prepare_model`` snapshots θ_pre on the region R (every 2-D weight except the embeddings and the
  output head) **on the CPU**: one copy of R in the weights' dtype, held for the whole run.
* the trainer fine-tunes as usual (θ_ft is what it trained, or ``graft_finetuned_path``);
* ``post_train`` grafts with the trainer's own ``compute_loss`` on the first ``graft_max_batches``
  batches of its train dataloader, writes ``output_dir/graft_delta.safetensors`` (the engine's sparse
  delta of the graft, applied to θ_pre it gives the grafted model) and puts the trainer's model back
  to the weights it trained, bit for bit (the saved model is the fine-tuned one).

Selection (the base patch) and the artifact are the sparse engine's (:mod:`ftplugins.sparse`).
This module imports no torch; the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.distributed_reasons import OWN_LOOP
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import GraftOptions

STATE_KEY = "graft"
DELTA_FILE = "graft_delta.safetensors"  # = grafting.DELTA_FILE


def graft(*args: Any, **kwargs: Any):
    """Learn a binary graft; see :func:`ftplugins.methods.graft.grafting.graft`."""
    from .grafting import graft as _graft

    return _graft(*args, **kwargs)


class GraftPlugin(Plugin):
    name = "graft"
    summary = "Grafting: localize the skill a fine-tune learned in a tiny binary mask over θ_ft - θ_pre (post-train)"
    paper = ("Panigrahi et al., Task-Specific Skill Localization in Fine-tuned Language Models, ICML 2023, "
             "arXiv:2302.06600")
    options = GraftOptions
    excludes = {
        "adapter": "localizes the skill in the fine-tuned base weights, which an adapter leaves unchanged",
    }
    distributed = ("single",)
    distributed_refusals = {mode: "grafting trains its mask " + OWN_LOOP for mode in ("ddp", "fsdp", "deepspeed")}
    trainers = ("SFTTrainer",)

    @hookimpl
    def prepare_model(self, run, model):
        from .grafting import snapshot_pretrained

        run.state.setdefault(STATE_KEY, {}).update(snapshot_pretrained(model))
        return model

    @hookimpl
    def post_train(self, run, trainer):
        from .grafting import graft_after_training

        state = run.state.get(STATE_KEY, {})
        if "pretrained" not in state:
            raise FtpluginsError("graft: post_train ran without the θ_pre snapshot of prepare_model; build the "
                                 "trainer with ftplugins.compose so that the hooks run in order")
        state["result"] = graft_after_training(trainer, run.options_for(self), state)


plugin = GraftPlugin()

__all__ = ["GraftOptions", "GraftPlugin", "graft", "plugin"]
