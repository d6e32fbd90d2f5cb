"""LEVI: layer-wise ensemble of a frozen pre-trained model with a small model trained from scratch.

Roh et al., "LEVI: Generalizable Fine-tuning via Layer-wise Ensemble of Different Views" (ICML 2024,
arXiv:2402.04644); no public code. Adapting heads take the concatenation of chosen intermediate representations of
the pre-trained model and the small model's output; one loss over all heads; the ensemble predicts. The pre-trained
model stays frozen (or trains a PEFT adapter given to the trainer). The paper leaves the layers, the small model and
the ensembling open: see :mod:`.options` for the choices made here.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.distributed_reasons import untested
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import LeviOptions


class LeviPlugin(Plugin):
    name = "levi"
    summary = "LEVI: frozen pre-trained encoder + small model from scratch; per-layer adapting heads, ensembled."
    paper = "Roh et al., ICML 2024, arXiv:2402.04644"
    options = LeviOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {
        "ddp": untested("ddp", "LeviModel trains through the DDP forward like any module"),
        "fsdp": untested("fsdp", "LeviModel has no _no_split_modules, so fully_shard wraps it as one unit by default"),
        "deepspeed": untested("deepspeed", "LeviModel is a plain module; its frozen encoder rides in the engine"),
    }
    claims = {"trainable_set": "trains only the small model and the adapting heads (and an adapter, if any)",
              "loss": "the mean of the adapting heads' cross-entropies"}

    @hookimpl
    def validate(self, run):
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin levi trains a classifier with transformers.Trainer, not {trl[0]}; compose "
                                 "it over transformers.Trainer.")

    @hookimpl
    def prepare_model(self, run, model):
        from .model import LeviModel, encoder_of

        encoder_of(model)
        if not hasattr(model, "peft_config"):
            model.requires_grad_(False)  # frozen backbone; with a PEFT model only its adapter trains
        opts = run.options_for(self)
        wrapped = LeviModel(model, opts.levi_layers, opts.levi_small_dim, opts.levi_head_dim, opts.levi_ensemble)
        return wrapped.to(next(model.parameters()).device)


plugin = LeviPlugin()
