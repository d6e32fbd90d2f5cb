"""Deep safety alignment: token-wise constrained SFT and safety-recovery augmentation.

Qi et al., "Safety Alignment Should Be Made More Than Just a Few Tokens Deep", ICLR 2025
(arXiv:2406.05946); reference code Unispac/shallow-vs-deep-alignment. Two pieces, usable alone or
together:

* **Token-wise constrained objective** (section 4, ``deep_align_objective=constrained``, default):
  each response token's NLL is weighted by w_t = 2(1 - sigmoid(beta_t (log p_theta - log p_ref)))
  (detached, clamped >= 1e-3), with a larger beta on the first response tokens (0.5, then 2.0 for
  tokens 2-5, 0.1 after), so the first tokens - where a shallow alignment lives - drift least from
  the initial model. See :mod:`.objective` (maths), :mod:`.trainer` (loss, normalisation) and
  :mod:`ftplugins.objectives.ref_logprobs` (the reference: adapter-disabled model with PEFT, or the
  initial model's log-probs precomputed / a frozen copy with full fine-tuning).
* **Safety-recovery augmentation** (section 3, ``deep_align_augment=True``): (prompt, harmful
  response, refusal) rows become "prompt + a few harmful tokens -> refusal" examples, mixed with
  utility rows; see :mod:`.augment` for the dataset format.

Memory: the loss reuses TRL's fused LM head, so it never builds [batch, seq, vocab] logits. With
full fine-tuning, ``deep_align_ref=precompute`` (default) needs no second model (4 bytes per
training token of storage, one no-grad pass before training); ``on_the_fly`` keeps a frozen copy
of the weights. With PEFT either mode uses the adapter-disabled model.

This module stays light (no torch); the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import DeepAlignOptions


class DeepAlignPlugin(Plugin):
    name = "deep_align"
    summary = "Deep safety alignment: token-wise constrained SFT (beta_t schedule) + safety-recovery augmentation."
    paper = "Qi et al., Safety Alignment Should Be Made More Than Just a Few Tokens Deep, ICLR 2025, arXiv:2406.05946"
    options = DeepAlignOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "loss": "reweights each token's NLL against the initial model",
    }
    trainers = ("SFTTrainer",)
    # FSDP: the reference pass and the frozen copy happen in train_begin, before accelerate shards the model, so
    # on the whole initial weights (tests/test_fsdp.py). DeepSpeed: not run yet.
    distributed = ("single", "ddp", "fsdp")
    distributed_refusals = {"deepspeed": "ZeRO-3 may partition the weights at load (zero.Init), and the reference pass "
                                          "in train_begin needs them whole; untested"}

    @hookimpl
    def validate(self, run):
        opts, args = run.options_for(self), run.args
        if args is None or opts.deep_align_objective != "constrained":
            return
        if getattr(args, "label_smoothing_factor", 0) > 0:
            raise FtpluginsError(
                f"deep_align reweights the per-token NLL, and label_smoothing_factor={args.label_smoothing_factor} "
                "replaces it with a smoothed loss; set label_smoothing_factor=0 or deep_align_objective=sft."
            )
        if getattr(args, "loss_type", "nll") != "nll":
            raise FtpluginsError(
                f"deep_align reweights the NLL loss; loss_type={args.loss_type!r} is another per-token loss. Set "
                "loss_type=nll."
            )

    @hookimpl
    def train_begin(self, run, trainer):
        from .trainer import prepare_reference

        prepare_reference(run, trainer)

    @hookimpl
    def dataset_columns(self, run):
        # the precomputed reference values travel with the rows until the collator takes them
        from ftplugins.objectives.ref_logprobs import REF_COLUMN

        return [REF_COLUMN]

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, inner):
        from .trainer import compute_loss

        return compute_loss(run, trainer, model, inputs, inner)

    def input_columns(self, options, split):
        if not options.deep_align_augment:
            return []
        return ["prompt", options.deep_align_harmful_column, options.deep_align_refusal_column]

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        opts = run.options_for(self)
        if not opts.deep_align_augment:
            return None
        from ftplugins.objectives.sft_tokens import text_format

        from .augment import safety_recovery_dataset

        if not hasattr(dataset, "to_list"):
            raise FtpluginsError(
                f"deep_align_augment tokenizes the {split} rows before training, which a streaming (iterable) dataset "
                "cannot hold; load the dataset without streaming."
            )
        args = run.args
        return safety_recovery_dataset(
            dataset,
            text_format(run),
            prob=opts.deep_align_augment_prob,
            max_prefix=opts.deep_align_augment_max_prefix,
            harmful_column=opts.deep_align_harmful_column,
            refusal_column=opts.deep_align_refusal_column,
            seed=getattr(args, "seed", 0),
            split=split,
            completion_only_loss=getattr(args, "completion_only_loss", None) is not False,
        )

    @hookimpl
    def prepare_model(self, run, model):
        if not run.options_for(self).deep_align_disable_dropout:
            return None
        disable_dropout(model)
        return model

    @hookimpl
    def data_collator(self, run, collator):
        opts = run.options_for(self)
        if opts.deep_align_objective != "constrained" or opts.deep_align_ref != "precompute":
            return None
        from .trainer import ReferenceColumnCollator

        return ReferenceColumnCollator(collator)


def disable_dropout(model) -> None:
    """Dropout off everywhere: ``nn.Dropout`` modules and attention dropout read from module attributes."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


plugin = DeepAlignPlugin()
