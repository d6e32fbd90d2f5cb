"""FM3's multitask hypernetwork adapters: one hypernetwork emits every layer's adapter weights per task.

"FM3: Few-shot Multimodal Multitask Multilingual" (arXiv:2303.12489); no public code or body text was found. Spec
C §7 reads it as: a SetFit-style contrastive stage, task-specific hypernetworks that generate the adapters
(HyperFormer-like: task + layer + position embeddings in, adapter weights out) and task-specific heads. Built here
for text classification on ``transformers.Trainer``: the base classifier stays frozen; the hypernetwork and one head
per task train on a dataset that mixes the tasks (a ``task`` column). Each task exports to a plain PEFT
``bottleneck`` adapter with its head. The multimodal part (image encoders, VQA) is not built.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

import contextlib
import os

from ftplugins.distributed_reasons import UNWRAPPED_FORWARD
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import HyperAdapterOptions

WATCH_KEY = "hyper_adapter_watching"


class HyperAdapterPlugin(Plugin):
    name = "hyper_adapter"
    summary = "FM3: a hypernetwork generates every layer's adapters per task; task heads; SetFit contrastive stage."
    paper = "FM3: Few-shot Multimodal Multitask Multilingual, arXiv:2303.12489"
    options = HyperAdapterOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {
        "ddp": UNWRAPPED_FORWARD + " (the contrastive stage)",
        "fsdp": "functional_call swaps generated adapter weights in for parameters that FSDP2 shards and gathers "
                "itself",
        "deepspeed": "functional_call swaps generated adapter weights in for parameters that ZeRO-3 partitions and "
                     "gathers",
    }
    claims = {"adapter": "generates bottleneck adapters per task with a hypernetwork",
              "trainable_set": "trains only the hypernetwork and the task heads",
              "loss": "each row's cross-entropy under its task's head (or the contrastive stage's cosine loss)"}

    @hookimpl
    def validate(self, run):
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin hyper_adapter trains classifiers with transformers.Trainer, not {trl[0]}; "
                                 "compose it over transformers.Trainer.")
        if not run.options_for(self).hyper_adapter_tasks:
            raise FtpluginsError("plugin hyper_adapter needs its tasks: --hyper_adapter_tasks NAME:NUM_LABELS ... "
                                 "(e.g. sst2:2 mnli:3), one per task in the dataset's 'task' column.")

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from .tasks import index_tasks

        return index_tasks(dataset, run.options_for(self).task_list(), split, require_all=split == "train")

    @hookimpl
    def prepare_model(self, run, model):
        from .model import HyperAdapterModel

        if hasattr(model, "peft_config"):
            raise FtpluginsError("plugin hyper_adapter generates its own adapters: give the trainer the plain "
                                 "classifier, without a PEFT adapter on it.")
        opts = run.options_for(self)
        return HyperAdapterModel(model, opts.task_list(), opts).to(next(model.parameters()).device)

    @hookimpl
    def phase(self, run, trainer, phase):
        """Around ``train()``: the per-adapter optimizer watches the hypernetwork (entered when it is built, or now
        when a trainer trains again with the optimizer it kept)."""
        if phase != "train" or run.options_for(self).hyper_adapter_parametrization != "orthogonal":
            return None
        return _watching_while_training(run, trainer)

    def builds_optimizer(self, options):
        return options.hyper_adapter_parametrization == "orthogonal"  # per-adapter steps; hyperformer: AdamW

    @hookimpl
    def create_optimizer(self, run, model, args):
        if not self.builds_optimizer(run.options_for(self)):
            return None
        from .optimizer import build_optimizer

        optimizer = build_optimizer(model, args)
        if WATCH_KEY in run.state:  # else built outside train(): train()'s phase will find it and watch
            run.state[WATCH_KEY].enter_context(optimizer.watching())
        return optimizer

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        steps = run.options_for(self).hyper_adapter_contrastive_steps
        if not model.training or trainer.state.global_step >= steps:
            return inner()
        loss = trainer.accelerator.unwrap_model(model).contrastive_loss(**inputs)
        return (loss, None) if return_outputs else loss

    @hookimpl
    def post_train(self, run, trainer):
        if not run.options_for(self).hyper_adapter_export or not trainer.is_world_process_zero():
            return
        from .export import export_all

        root = os.path.join(trainer.args.output_dir, "task_adapters")
        export_all(trainer.accelerator.unwrap_model(trainer.model), root)


@contextlib.contextmanager
def _watching_while_training(run, trainer):
    from .optimizer import PerAdapterSteps

    with contextlib.ExitStack() as stack:
        run.state[WATCH_KEY] = stack
        kept = getattr(trainer, "optimizer", None)
        kept = getattr(kept, "optimizer", kept)  # Accelerate's wrapper
        if isinstance(kept, PerAdapterSteps):
            stack.enter_context(kept.watching())
        try:
            yield
        finally:
            run.state.pop(WATCH_KEY, None)


plugin = HyperAdapterPlugin()
