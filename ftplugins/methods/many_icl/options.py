"""Options of many-shot in-context fine-tuning (ManyICL).

The paper (arXiv:2506.11103) has no public code and gives no shot count; the defaults are ours:
fill each sequence with as many shots as fit in ``max_length``, loss on every answer, shots and
sequences shuffled with the run's seed.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice

LOSSES = ("all", "last")


@dataclass
class ManyIclOptions:
    many_icl_shots: int = field(
        default=0,
        metadata={
            "help": "Shots (prompt/completion examples) per training sequence: 0 packs as many as fit in max_length "
            "(the paper's 'many-shot' setting), k > 0 at most k (fewer when k do not fit). 1 is plain SFT."
        },
    )
    many_icl_loss: str = field(
        default="all",
        metadata={
            "help": "Which answers carry the loss: 'all' (every answer, each conditioned on the earlier shots; the "
            "paper's objective) or 'last' (only the final answer of each sequence; the few-shot baseline)."
        },
    )
    many_icl_task_column: str = field(
        default="",
        metadata={
            "help": "Column naming each row's task; a sequence only holds shots of one task. Empty: the whole "
            "dataset is one task."
        },
    )
    many_icl_shuffle: bool = field(
        default=True,
        metadata={
            "help": "Shuffle the examples of each task before packing (so shots are not grouped by the dataset's own "
            "order, e.g. sorted by label) and the packed sequences across tasks, with the run's seed."
        },
    )

    def __post_init__(self):
        if self.many_icl_shots < 0:
            raise ValueError(
                f"--many_icl_shots {self.many_icl_shots!r}: expected 0 (as many as fit) or a positive count"
            )
        check_choice("many_icl_loss", self.many_icl_loss, LOSSES)
