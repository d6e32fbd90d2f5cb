"""Masked Thought (MFT): randomly mask input tokens of the reasoning steps during SFT.

Chen et al., "Masked Thought: Simply Masking Partial Reasoning Steps Can Improve Mathematical
Reasoning Learning of Language Models", ACL 2024 (arXiv:2403.02178); reference code
ChangyuChen347/MaskedThought. Each response token of a training batch is replaced, with
probability p, by a random token (GSM8K trainer) or a ``<mask>`` token (MetaMath script); the
labels keep the original tokens, so the loss is the ordinary SFT loss on a corrupted context.
p ramps linearly from 0 to ``masked_thought_ratio`` over the first ``masked_thought_warmup`` of
training. Evaluation sees clean inputs.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import MaskedThoughtOptions

MASK_TOKEN = "<mask>"


class MaskedThoughtPlugin(Plugin):
    name = "masked_thought"
    summary = "Masked Thought (MFT): mask random reasoning-step input tokens during SFT, keep the labels."
    paper = "Chen et al., ACL 2024, arXiv:2403.02178"
    options = MaskedThoughtOptions
    trainers = ("SFTTrainer",)
    # Only the batches change, so every set-up that runs SFT runs this.
    distributed = ("single", "ddp", "fsdp", "deepspeed")

    @hookimpl
    def validate(self, run):
        opts = run.options_for(self)
        args = run.args
        if args is None or opts.masked_thought_ratio == 0:
            return
        if getattr(args, "dataloader_num_workers", 0) > 0:
            raise FtpluginsError(
                f"masked_thought with masked_thought_ratio={opts.masked_thought_ratio} and "
                f"dataloader_num_workers={args.dataloader_num_workers}: the masking collator reads the optimizer "
                "step and counts micro-batches in the main process, which worker processes cannot see; set "
                "dataloader_num_workers=0 (collating tokenized batches is cheap)."
            )
        if opts.masked_thought_drop_attention and getattr(args, "padding_free", False):
            raise FtpluginsError(
                "masked_thought_drop_attention=True needs an attention mask, and padding_free=True batches have "
                "none; set masked_thought_drop_attention=False or padding_free=False."
            )

    @hookimpl
    def phase(self, run, phase):
        """Masking on for ``train()``, off for ``evaluate()`` / ``predict()`` (also inside training)."""
        from .collator import STATE_KEY

        collator = run.state.get(STATE_KEY)
        return collator.masking(phase == "train") if collator is not None else None

    @hookimpl
    def prepare_model(self, run, model):
        if run.options_for(self).masked_thought_variant != "mask_token":
            return None
        add_mask_token(tokenizer_of(run), model)
        return model

    @hookimpl
    def data_collator(self, run, collator):
        from .boundary import require_response_boundary
        from .collator import STATE_KEY, MaskedThoughtCollator

        opts = run.options_for(self)
        if opts.masked_thought_ratio > 0:
            require_response_boundary(run.trainer)
        if opts.masked_thought_variant == "mask_token":
            replacement = {"mask_token_id": tokenizer_of(run).mask_token_id}
        else:
            replacement = {"vocab_size": vocab_size(run)}
        wrapped = MaskedThoughtCollator(collator, run, opts, **replacement)
        run.state[STATE_KEY] = wrapped
        return wrapped


def tokenizer_of(run) -> Any:
    """The run's tokenizer (a processor's ``tokenizer`` for vision-language models)."""
    processing_class = run.processing_class
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is None:
        raise FtpluginsError(
            "masked_thought_variant=mask_token needs the tokenizer (processing_class) to find or add the mask "
            "token; pass processing_class= to the trainer."
        )
    return tokenizer


def vocab_size(run) -> int:
    """Random replacements are ids the tokenizer can produce and the model can embed."""
    rows = run.trainer.model.get_input_embeddings().num_embeddings
    processing_class = run.processing_class
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return min(rows, len(tokenizer)) if tokenizer is not None else rows


def add_mask_token(tokenizer, model) -> int:
    """Make sure ``tokenizer`` has a mask token the model can embed; returns its id.

    As in the MetaMath script of the reference, a token that is new to the vocabulary gets input
    and output embedding rows equal to the mean of the existing rows, so that masking starts from
    an "average" token rather than a random one.
    """
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    known = len(tokenizer)
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.mask_token_id
    if mask_id < known:
        return mask_id  # "<mask>" was already in the vocabulary: it has a trained row
    if getattr(model, "peft_config", None):
        raise FtpluginsError(
            "masked_thought_variant=mask_token must add a '<mask>' embedding row, which a PEFT adapter does not "
            "train or save; use masked_thought_variant=random, or a tokenizer (and model) that has a mask token."
        )
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise FtpluginsError(
            "masked_thought_variant=mask_token cannot add a '<mask>' embedding row to a model partitioned by "
            "DeepSpeed ZeRO-3; use masked_thought_variant=random, or add the mask token to the tokenizer and model "
            "before training."
        )
    _init_new_rows(model, mask_id, known)
    return mask_id


def _init_new_rows(model, mask_id: int, known: int) -> None:
    import torch

    if mask_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
    embeddings = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0].weight:
        embeddings.append(output)
    with torch.no_grad():
        for module in embeddings:
            module.weight[mask_id] = module.weight[:known].mean(dim=0)


plugin = MaskedThoughtPlugin()
