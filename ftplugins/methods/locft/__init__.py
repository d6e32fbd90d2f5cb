"""LocFT-BF: localized breadth-first fine-tuning for model editing (ICT-STAR/LocFT).

Fine-tune exactly the named module(s) (all their parameters, full rank), everything else frozen.

* **Exact names.** ``locft_modules`` is matched exactly against ``model.named_modules()`` (the
  reference matches substrings, so its "layers.2" also trains layers 20-29). An unknown name is an
  :class:`~ftplugins.errors.UnsupportedModelError` listing the closest module names.
* **Breadth-first on the HF Trainer.** One optimizer step per minibatch of ``locft_batch_size``
  edits (``per_device_train_batch_size`` is set to it, gradient accumulation must be 1), and one
  Trainer epoch is one pass over every edit in shuffled minibatches, which is the reference's loop
  (each epoch visits all edits before any is revisited, rather than editing one fact at a time).
  ``num_train_epochs`` / ``max_steps`` bound the run (the paper: at most 25 epochs).
* **Loss.** Cross-entropy on the target tokens only (TRL's completion-only loss sets the prompt's
  labels to -100), averaged per sample, then over the minibatch (so long targets do not outweigh
  short ones; the Trainer's default averages over tokens).
* **Skip and stop.** A minibatch whose loss is below ``locft_skip_loss`` does not update (its Adam
  step is skipped, moments untouched); training stops at the end of the first epoch whose mean
  minibatch loss is below ``locft_threshold`` (``control.should_training_stop``).
* **Optimizer.** Adam (no weight decay, whatever ``weight_decay`` says) with the Trainer's lr,
  betas, eps and schedule.
* **Data.** ``transform_dataset`` turns editing rows (``prompt``, the target column, optional
  ``paraphrase_prompts`` and ``neighbourhood_prompts`` / ``neighbourhood_targets`` lists used only
  for evaluation) into prompt/completion rows: completion = ' ' + target + EOS.
  :func:`evaluate_edits` reports teacher-forced exact match of the target tokens.
* **Locating the module.** The paper picks it per model from a sweep of locations; ``ftplugins locft-locate``
  runs that sweep for any model (:mod:`.locate`).

This module imports no torch.
"""

from __future__ import annotations

from typing import Any

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import LocftOptions

STATE_KEY = "locft"


def evaluate_edits(model: Any, tokenizer: Any, dataset: Any, target_column: str = "target",
                   separator: str = "auto") -> dict:
    """``edit_success``, ``paraphrase_success``, ``neighbourhood_preservation``; see :mod:`.data`."""
    from .data import evaluate_edits as _evaluate

    return _evaluate(model, tokenizer, dataset, target_column=target_column, separator=separator)


class LocftPlugin(Plugin):
    name = "locft"
    summary = "LocFT-BF: model editing by breadth-first full fine-tuning of one exactly named module"
    paper = "Localized breadth-first fine-tuning for model editing (LocFT-BF), reference code ICT-STAR/LocFT"
    options = LocftOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains one named module only",
        "optimizer": "steps it with its loss-skipping Adam",
        "loss": "trains on a per-sample target-only loss",
        "targets": "trains on the edit targets of its target column",
    }
    trainers = ("SFTTrainer",)
    # The skip decision uses this process's minibatch loss; under DDP processes could disagree and diverge.
    distributed = ("single",)
    distributed_refusals = {mode: "its Adam skips a step on this process's minibatch loss, so processes would skip "
                                  "different steps" for mode in ("ddp", "fsdp", "deepspeed")}

    def add_commands(self, subparsers):
        """``ftplugins locft-locate``: the paper's sweep of tuning locations (:mod:`.locate`)."""
        from .cli import add_subparser

        add_subparser(subparsers)

    @hookimpl
    def validate(self, run):
        from .training import configure_args

        configure_args(run.args, run.options_for(self))

    @hookimpl
    def compute_loss(self, run, model, inputs, return_outputs):
        from .training import compute_loss

        return compute_loss(run, model, inputs, return_outputs)

    def input_columns(self, options, split):
        return ["prompt", options.locft_target_column]

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from .data import to_sft_rows

        opts = run.options_for(self)
        return to_sft_rows(dataset, run.processing_class, opts.locft_target_column, opts.locft_separator)

    @hookimpl
    def callbacks(self, run):
        from .training import EarlyStop, monitor_of

        return [EarlyStop(monitor_of(run), run.options_for(self).locft_threshold)]

    @hookimpl
    def prepare_model(self, run, model):
        from .training import prepare

        run.state.setdefault(STATE_KEY, {})["targets"] = prepare(model, run.options_for(self).locft_modules)
        return model

    @hookimpl
    def create_optimizer(self, run, model, args):
        from .training import build_optimizer, monitor_of

        targets = run.state.get(STATE_KEY, {}).get("targets")
        if targets is None:
            raise FtpluginsError("locft: create_optimizer ran before prepare_model; build the trainer with "
                                 "ftplugins.compose so that the hooks run in order")
        return build_optimizer(model, args, run.options_for(self), targets, monitor_of(run))


plugin = LocftPlugin()
