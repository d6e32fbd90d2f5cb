"""SAMDA: a frozen vision foundation encoder ("generic") fused into a small segmentation network ("expert").

*SAMDA: Leveraging SAM on Few-Shot Domain Adaptation for Electronic Microscopy Segmentation* (2024) combines SAM
with nnUNet in the embedding space for few-shot domain adaptation. Here: the model given to ``transformers.Trainer``
is the expert (diffusers' ``UNet2DModel`` with out_channels = classes, trained on the source domain or fresh); the
plugin wraps it with the frozen encoder named by ``samda_encoder`` (SAM's vision encoder, or any AutoModel image
encoder) and an adaptation module that projects the generic embeddings into the expert's bottleneck and adds them
(the paper's exact fusion is not public: :mod:`.model` states ours). Loss: Dice + cross-entropy. Rows: an image and
its mask.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import SamdaOptions


class SamdaPlugin(Plugin):
    name = "samda"
    summary = "SAMDA: frozen SAM (or any image encoder) features fused into a segmentation UNet's bottleneck; Dice+CE"
    paper = "SAMDA: Leveraging SAM on Few-Shot Domain Adaptation for Electronic Microscopy Segmentation, 2024"
    options = SamdaOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {mode: "batch Dice sums over one process's images; data parallel averages per-process "
                                  "Dice, not the batch's" for mode in ("ddp", "fsdp", "deepspeed")}
    claims = {"trainable_set": "trains the expert and the adaptation module; the generic encoder stays frozen",
              "loss": "Dice + cross-entropy over the expert's segmentation logits"}

    @hookimpl
    def validate(self, run):
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin samda trains a segmentation network with transformers.Trainer, not "
                                 f"{trl[0]}; compose it over transformers.Trainer.")
        if not run.options_for(self).samda_encoder:
            raise FtpluginsError("plugin samda needs --samda_encoder: a folder or Hub id of the frozen image encoder "
                                 "(a SamModel, a SamVisionModel or another AutoModel image encoder).")

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from .data import rename_columns

        opts = run.options_for(self)
        return rename_columns(dataset, opts.samda_image_column, opts.samda_mask_column)

    @hookimpl
    def prepare_model(self, run, model):
        from .model import SamdaModel, load_generic_encoder

        opts = run.options_for(self)
        encoder = load_generic_encoder(opts.samda_encoder).to(next(model.parameters()).device)
        if run.trainer is not None and run.args.label_names is None:
            # The Trainer read its label names from the expert's forward (none): evaluation would report no loss.
            run.trainer.label_names = ["labels"]
        return SamdaModel(model, encoder, opts.samda_bottleneck, opts.samda_fusion, opts.samda_dice_weight,
                          opts.samda_ce_weight)

    def builds_optimizer(self, options):
        return options.samda_adapter_lr_scale != 1.0 and options.samda_fusion != "none"  # else one rate, or no adapter

    @hookimpl
    def create_optimizer(self, run, model, args):
        from .model import adapter_param_groups

        opts = run.options_for(self)
        if not self.builds_optimizer(opts):
            return None
        return adapter_param_groups(model, args, opts.samda_adapter_lr_scale)

    @hookimpl
    def data_collator(self, run, collator):
        # The trainer's own collator (default_data_collator) knows nothing of masks; rows are image + mask here.
        from .data import SegmentationCollator

        return SegmentationCollator(run.trainer.model.num_classes)


plugin = SamdaPlugin()
