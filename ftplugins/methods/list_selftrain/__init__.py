"""LiST: lite prompted self-training — a PET teacher, then self-training sessions on unlabelled rows.

Wang et al., "LiST: Lite Prompted Self-training Makes Parameter-Efficient Few-shot Learners" (Findings of NAACL 2022,
arXiv:2110.06274); reference microsoft/LiST. The teacher is ``pet`` (prompt + verbaliser, only an adapter and the
head train), so select both, this one first: ``--plugins list_selftrain,pet``. Rows of the training dataset whose
label is empty (``None`` or ``""``) are the unlabelled data: the trainer trains the teacher on the labelled rows, then
``post_train`` runs S sessions (see :mod:`.sessions`): teacher soft labels, re-initialised student adapter, weighted
distillation on unlabelled batches (uniform for the first 60% of a session, then meta re-weighting, :mod:`.reweight`),
then labelled steps.

Choices: the paper's LiST adapter (linear, no activation, after the attention-output and FFN-output dense layers) is
a placement of the ``bottleneck`` plugin; here the adapter is whatever ``pet`` trains (LoRA by default). The sessions
are a plain torch loop in ``post_train`` on one process.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.distributed_reasons import OWN_LOOP
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import ListSelftrainOptions

STATE = "list_selftrain"


def unlabelled(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class ListSelftrainPlugin(Plugin):
    name = "list_selftrain"
    summary = "LiST: self-training of a pet teacher on unlabelled rows with meta re-weighted distillation."
    paper = "Wang et al., Findings of NAACL 2022, arXiv:2110.06274"
    options = ListSelftrainOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {mode: "post_train's self-training sessions train " + OWN_LOOP
                            for mode in ("ddp", "fsdp", "deepspeed")}
    claims = {"self_training": "trains students on the teacher's soft labels of unlabelled rows after training"}

    @hookimpl
    def validate(self, run):
        names = [p.name for p in run.plugins]
        if "pet" not in names or names.index("pet") < names.index(self.name):
            raise FtpluginsError(
                f"list_selftrain self-trains a pet teacher: select both, list_selftrain first (--plugins "
                f"list_selftrain,pet); got --plugins {','.join(names)}."
            )

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if dataset is None or split != "train":
            return None
        column = run.options_for("pet").pet_label_column
        if column not in dataset.column_names:
            return None  # pet names the missing column
        empty = [i for i, v in enumerate(dataset[column]) if unlabelled(v)]
        if not empty:
            raise FtpluginsError(
                f"list_selftrain: the training dataset has no unlabelled rows (an empty {column!r}); add the "
                "unlabelled examples with label None or '' beside the labelled ones."
            )
        if len(empty) == len(dataset):
            raise FtpluginsError(f"list_selftrain: every row of the training dataset is unlabelled (empty {column!r}); "
                                 "the teacher needs labelled rows.")
        empty_set = set(empty)
        run.state[STATE] = {"unlabelled": dataset.select(empty)}
        return dataset.select([i for i in range(len(dataset)) if i not in empty_set])

    @hookimpl
    def prepare_model(self, run, model):
        # The student adapter restarts from the adapter's initial values each session (pet's head is not yet added).
        adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        run.state.setdefault(STATE, {})["adapter_init"] = adapter if hasattr(model, "peft_config") else {}
        return None

    @hookimpl
    def post_train(self, run, trainer):
        from ftplugins.methods.pet.cloze import encode

        from .sessions import run_sessions

        pet_opts = run.options_for("pet")
        verbalizer = run.state["pet_verbalizer"]
        tokenizer = run.trainer.processing_class if run.processing_class is None else run.processing_class
        raw = run.state[STATE]["unlabelled"]
        placeholder = raw.map(lambda _: {pet_opts.pet_label_column: verbalizer.labels[0]})  # dropped below
        unlabelled = [dict(r) for r in encode(placeholder, pet_opts, tokenizer, verbalizer).remove_columns(
            ["labels", "pet_pattern"])]
        labelled = [{k: v for k, v in r.items() if k != "pet_pattern"} for r in trainer.train_dataset]
        model = trainer.accelerator.unwrap_model(trainer.model)
        records = run_sessions(model, run.state[STATE]["adapter_init"], labelled, unlabelled, trainer.data_collator,
                               tokenizer.mask_token_id, run.options_for(self))
        run.state[STATE]["sessions"] = records


plugin = ListSelftrainPlugin()
