"""Options of the mean teacher (PS-TTL defaults: α 0.9996, confidence 0.9, λ 0.5)."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_range


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

    def __post_init__(self):
        check_range("mean_teacher_alpha", self.mean_teacher_alpha, 0.0, 1.0)
        check_range("mean_teacher_threshold", self.mean_teacher_threshold, 0.0, 1.0)
        check_range("mean_teacher_weight", self.mean_teacher_weight, 0.0, 1e6)
        if not self.mean_teacher_label_column:
            raise ValueError("--mean_teacher_label_column '': expected the name of the label column")
