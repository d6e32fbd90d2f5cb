"""Mean teacher for test-time learning (PS-TTL's teacher–student part).

Gao et al., "PS-TTL: Prototype-based Soft-labels and Test-Time Learning for Few-shot Object Detection" (ACM MM
2024); reference gaoyingjay/PS-TTL. An EMA teacher (α 0.9996) labels the unlabelled rows of each batch;
predictions with confidence ≥ 0.9 become pseudo-labels; the student's loss is the supervised CE on the labelled rows
plus λ = 0.5 times the CE on the pseudo-labelled ones. Rows whose label is None or -100 are the unlabelled stream.
With ``mean_teacher_labels=prototype`` (the default, PS-TTL's prototype-based soft labels, :mod:`.prototypes`) the
unconfident unlabelled rows also count, against a soft label from their teacher feature's similarity to class
prototypes; ``hard`` drops them.

Built: sequence classification (any model whose output has ``logits`` of shape [batch, classes]) on
``transformers.Trainer`` (soft labels included), and object detection with DETR-style models (:mod:`.detection`:
the teacher's confident detections are the unlabelled images' targets). The teacher is saved into every checkpoint
(``mean_teacher.safetensors``, the prototypes in ``mean_teacher_prototypes.safetensors``) and restored on resume,
so a resumed run ends as an uninterrupted one. Not built: prototype soft labels for detection (PS-TTL's RoI
prototypes).

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import MeanTeacherOptions

TEACHER = "mean_teacher"
PROTOTYPES = "mean_teacher_prototypes"


class MeanTeacherPlugin(Plugin):
    name = "mean_teacher"
    summary = "Mean teacher: an EMA teacher pseudo-labels the unlabelled rows (confidence ≥ τ); CE + λ·pseudo-CE."
    paper = "Gao et al., PS-TTL, ACM MM 2024 (code: gaoyingjay/PS-TTL)"
    options = MeanTeacherOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {
        "ddp": "each process updates the class prototypes from its own rows, never all-reduced, so soft labels drift "
               "apart",
        "fsdp": "the EMA teacher is updated from the student's parameters, which FSDP2 shards (it would see one shard)",
        "deepspeed": "the EMA teacher is updated from the student's parameters, which ZeRO-3 partitions",
    }
    claims = {"loss": "adds the CE of the unlabelled rows against the teacher's confident pseudo-labels (and, by "
                      "default, prototype soft labels for the others) to the supervised CE"}

    @hookimpl
    def validate(self, run):
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin mean_teacher trains a classifier with transformers.Trainer, not {trl[0]}; "
                                 "compose it over transformers.Trainer.")

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if dataset is None or split != "train":
            return None
        column = run.options_for(self).mean_teacher_label_column
        if column not in dataset.column_names:
            raise FtpluginsError(f"mean_teacher: the dataset has no label column {column!r} (columns: "
                                 f"{dataset.column_names}); set mean_teacher_label_column.")
        values = dataset[column]
        if any(isinstance(v, dict) for v in values):  # detection targets: None marks an unlabelled image
            from .detection import check_detection_targets

            check_detection_targets(values, column)
            return None
        if not any(v is None or v == -100 for v in values):
            raise FtpluginsError(f"mean_teacher: the training dataset has no unlabelled rows ({column!r} None or "
                                 "-100); add the unlabelled stream, or train without mean_teacher.")
        if any(v is not None and not isinstance(v, int) for v in values):
            bad = next(v for v in values if v is not None and not isinstance(v, int))
            raise FtpluginsError(f"mean_teacher: label {bad!r} in {column!r} is not a class index; map the labels to "
                                 "integers (None or -100 for unlabelled rows).")
        return dataset.map(lambda row: {column: -100 if row[column] is None else row[column]})

    @hookimpl
    def callbacks(self, run):
        from .teacher import EmaCallback

        return [EmaCallback(run, run.options_for(self).mean_teacher_alpha, TEACHER)]

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        from .prototypes import Prototypes
        from .teacher import frozen_copy

        # The initial student; a resumed run replaces its weights with the checkpoint's (load_optimizer_state).
        run.state[TEACHER] = frozen_copy(trainer.accelerator.unwrap_model(trainer.model))
        run.state[PROTOTYPES] = Prototypes(run.options_for(self).mean_teacher_prototype_momentum)

    @hookimpl
    def save_checkpoint(self, run, trainer, checkpoint):
        from .teacher import save_prototypes, save_teacher

        if trainer.args.should_save and run.state.get(TEACHER) is not None:
            save_teacher(run.state[TEACHER], checkpoint)
            save_prototypes(run.state[PROTOTYPES], checkpoint)

    @hookimpl
    def load_optimizer_state(self, run, trainer, checkpoint):
        from .teacher import load_prototypes, load_teacher

        load_teacher(run.state[TEACHER], checkpoint)
        load_prototypes(run.state[PROTOTYPES], checkpoint)

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        teacher = run.state.get(TEACHER)
        if not model.training or teacher is None:
            return inner()
        import torch

        from .teacher import mean_teacher_loss

        opts = run.options_for(self)
        from .detection import is_detection_batch, mean_teacher_detection_loss

        if is_detection_batch(inputs):
            loss, outputs = mean_teacher_detection_loss(model, teacher, inputs, opts.mean_teacher_threshold,
                                                        opts.mean_teacher_weight)
            return (loss, outputs) if return_outputs else loss
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        soft = None
        if opts.mean_teacher_labels == "prototype":
            from .prototypes import teacher_logits_and_features
            from .teacher import trusted_rows

            teacher_logits, features = teacher_logits_and_features(teacher, inputs, outputs.logits.shape[-1])
            trusted, classes = trusted_rows(teacher_logits, labels, opts.mean_teacher_threshold)
            prototypes = run.state[PROTOTYPES]
            prototypes.update(features[trusted], classes[trusted], outputs.logits.shape[-1])
            soft = prototypes.soft_labels(features, opts.mean_teacher_temperature)
        else:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
        loss = mean_teacher_loss(outputs.logits, teacher_logits, labels, opts.mean_teacher_threshold,
                                 opts.mean_teacher_weight, soft)
        return (loss, outputs) if return_outputs else loss


plugin = MeanTeacherPlugin()
