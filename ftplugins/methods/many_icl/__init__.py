"""ManyICL: many-shot in-context fine-tuning, a loss on every answer in the context.

"You Only Fine-tune Once: Many-Shot In-Context Fine-Tuning for Large Language Models"
(arXiv:2506.11103; v2 calls it ManyICFT). Each training sequence packs many examples of one task,
``[x_1 y_1 x_2 y_2 ... x_k y_k]``, and every answer is a target:
L = -sum_i sum_{t in y_i} log p(y_i,t | x_1, y_1, ..., x_i, y_i,<t). The baseline it improves on
("few-shot" in-context fine-tuning) scores only y_k (``many_icl_loss=last``).

The paper has no public code; these choices are ours (issue notes):

* **Shot count**: as many as fit in ``max_length`` (``many_icl_shots=0``), or at most k.
* **Ordering**: examples of a task are shuffled with the run's seed before packing; the packed
  sequences of all tasks are shuffled again, so tasks alternate across sequences. Packing is done
  once per run (the same shot groups every epoch; the trainer's sampler reshuffles the sequences).
* **Separators**: none beyond the SFT format: standard shots are prompt + completion + EOS, one
  after the other; conversational shots are turns of one conversation rendered by the chat template.
* **Task mixing**: a sequence holds one task (``many_icl_task_column``); tasks never share a sequence.
* **Loss normalisation**: TRL's token mean over all answer tokens of the (accumulated) batch.
* **Truncation**: an example is never split; one longer than ``max_length`` alone is truncated like
  SFT does. ``many_icl_shots=1`` reproduces ``SFTTrainer``'s rows exactly.

The packed rows are pre-tokenized (``input_ids`` + ``labels``), which ``SFTTrainer`` uses as they
are, so TRL's own collator and loss do the rest. This module imports no torch.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import ManyIclOptions


class ManyIclPlugin(Plugin):
    name = "many_icl"
    summary = "ManyICL: pack many shots of one task per sequence, loss on every answer (many-shot in-context FT)."
    paper = "You Only Fine-tune Once: Many-Shot In-Context Fine-Tuning (ManyICL), arXiv:2506.11103"
    options = ManyIclOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "in_context_examples": "packs many shots of one task into each sequence",
    }
    excludes = {
        "targets": ("packs the rows into token sequences, after which their prompt/completion targets cannot be "
                    "rewritten (the result would depend on the plugins' order)"),
        "row_selection": ("packs the rows into multi-example sequences, which a selection method cannot score as "
                          "rows; select first with `ftplugins select`, then train the selected rows with many_icl"),
    }
    trainers = ("SFTTrainer",)
    # Only the rows change; the trainer trains them as it trains any pre-tokenized dataset.
    distributed = ("single", "ddp", "fsdp", "deepspeed")

    @hookimpl
    def validate(self, run):
        opts, args = run.options_for(self), run.args
        if args is None:
            return
        if getattr(args, "packing", False):
            raise FtpluginsError(
                "many_icl packs shots of one task per sequence itself; TRL's packing=True would pack those sequences "
                "again and mix tasks. Set packing=False."
            )
        if getattr(args, "completion_only_loss", None) is False:
            raise FtpluginsError(
                "many_icl puts the loss on the answers only (prompts are context), but completion_only_loss=False asks "
                "for a loss on the prompts too; leave completion_only_loss unset."
            )
        if opts.many_icl_shots == 0 and getattr(args, "max_length", None) is None:
            raise FtpluginsError(
                "many_icl_shots=0 packs as many shots as fit in max_length, and max_length is None; set max_length "
                "(the context budget) or a fixed many_icl_shots."
            )

    def input_columns(self, options, split):
        return ["prompt", "completion", *([options.many_icl_task_column] if options.many_icl_task_column else [])]

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from ftplugins.objectives.sft_tokens import text_format

        from .packing import pack_many_shot

        if not hasattr(dataset, "to_list"):
            raise FtpluginsError(
                f"many_icl groups the {split} examples by task before packing, which a streaming (iterable) dataset "
                "cannot do; load the dataset without streaming."
            )
        opts, args = run.options_for(self), run.args
        return pack_many_shot(
            dataset,
            text_format(run),
            max_length=getattr(args, "max_length", None),
            shots=opts.many_icl_shots,
            loss=opts.many_icl_loss,
            task_column=opts.many_icl_task_column,
            shuffle=opts.many_icl_shuffle,
            seed=getattr(args, "seed", 0),
            split=split,
            truncation_mode=getattr(args, "truncation_mode", "keep_start"),
        )


plugin = ManyIclPlugin()
