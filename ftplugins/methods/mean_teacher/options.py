"""Options of the mean teacher (PS-TTL defaults: α 0.9996, confidence 0.9, λ 0.5)."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range


@dataclass
class MeanTeacherOptions:
    mean_teacher_alpha: float = field(
        default=0.9996,
        metadata={"help": "EMA decay α: teacher ← α·teacher + (1 − α)·student after every optimizer step; 1 freezes "
                  "the teacher."},
    )
    mean_teacher_threshold: float = field(
        default=0.9, metadata={"help": "Teacher confidence (max class probability) a pseudo-label needs."})
    mean_teacher_weight: float = field(
        default=0.5, metadata={"help": "λ of the unsupervised term: loss = supervised + λ · unsupervised."})
    mean_teacher_label_column: str = field(
        default="label", metadata={"help": "Label column; None or -100 marks an unlabelled (test-stream) row."})

    mean_teacher_labels: str = field(
        default="prototype",
        metadata={"help": "Targets of the unlabelled rows: 'prototype' (PS-TTL: confident rows keep their hard "
                  "pseudo-label, the others get a soft label from their feature's cosine similarity to class "
                  "prototypes) or 'hard' (only the confident rows count, with their pseudo-label)."},
    )
    mean_teacher_temperature: float = field(
        default=0.1,
        metadata={"help": "Temperature T of the prototype soft labels: softmax(cos(feature, prototype) / T)."})
    mean_teacher_prototype_momentum: float = field(
        default=0.9,
        metadata={"help": "EMA momentum m of the class prototypes across batches (p ← m·p + (1 − m)·batch mean of the "
                  "teacher's features of labelled and confident rows); 0 uses the current batch only."},
    )

    def __post_init__(self):
        check_range("mean_teacher_alpha", self.mean_teacher_alpha, 0.0, 1.0)
        check_range("mean_teacher_threshold", self.mean_teacher_threshold, 0.0, 1.0)
        check_range("mean_teacher_weight", self.mean_teacher_weight, 0.0, 1e6)
        check_choice("mean_teacher_labels", self.mean_teacher_labels, ("prototype", "hard"))
        check_range("mean_teacher_temperature", self.mean_teacher_temperature, 1e-6, 1e6)
        check_range("mean_teacher_prototype_momentum", self.mean_teacher_prototype_momentum, 0.0, 1.0)
        if not self.mean_teacher_label_column:
            raise ValueError("--mean_teacher_label_column '': expected the name of the label column")
