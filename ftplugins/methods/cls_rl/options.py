"""Options of CLS-RL.

Defaults follow the reference scripts (minglllli/CLS-RL, ``src/cls-rl/src/open_r1/grpo.py`` and
``grpo_direct.py``): the thinking variant rewards format + accuracy, the no-thinking variant rewards accuracy only;
the prompt lists the class names, shuffled per example.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice

MODES = ("think", "no_think")
PROMPT_FORMATS = ("auto", "plain", "conversational")


@dataclass
class ClsRlOptions:
    cls_rl_mode: str = field(
        default="think",
        metadata={
            "help": "'think' (CLS-RL: the completion reasons in <think></think> and answers in <answer></answer>; "
            "format + accuracy rewards) or 'no_think' (No-Thinking-CLS-RL: the completion is the answer; exact-match "
            "accuracy reward only)."
        },
    )
    cls_rl_label_column: str = field(
        default="label",
        metadata={"help": "Dataset column holding each example's class name (a string, or an int with "
                  "cls_rl_labels naming the classes in order)."},
    )
    cls_rl_text_column: str = field(
        default="text",
        metadata={
            "help": "Dataset column with the input text the prompt is built from; '' keeps the dataset's own "
            "'prompt' column (the rewards still read cls_rl_label_column)."
        },
    )
    cls_rl_labels: list[str] | None = field(
        default=None,
        metadata={"help": "The class names, listed in every prompt; default: the distinct labels of the training "
                  "split, sorted."},
    )
    cls_rl_question: str = field(
        default="Which category does this text belong to?",
        metadata={"help": "The question put after the text (the paper's: 'What type of object is in the photo?')."},
    )
    cls_rl_shuffle: bool = field(
        default=True,
        metadata={"help": "Shuffle the listed class names per example (the paper's prompt), seeded by cls_rl_seed "
                  "and the example's index, so the same dataset gives the same prompts."},
    )
    cls_rl_seed: int = field(default=0, metadata={"help": "Seed of the per-example class-name shuffle."})
    cls_rl_prompt_format: str = field(
        default="auto",
        metadata={
            "help": "'conversational' (a user message, rendered with the chat template), 'plain' (a prompt string) "
            "or 'auto' (conversational when the tokenizer has a chat template)."
        },
    )

    def __post_init__(self):
        check_choice("cls_rl_mode", self.cls_rl_mode, MODES)
        check_choice("cls_rl_prompt_format", self.cls_rl_prompt_format, PROMPT_FORMATS)
        if not self.cls_rl_label_column:
            raise ValueError("--cls_rl_label_column '': expected the name of the dataset column with the labels")
        if self.cls_rl_labels is not None:
            names = [str(n).strip() for n in self.cls_rl_labels]
            if len(names) < 2 or len(set(names)) != len(names) or not all(names):
                raise ValueError(f"--cls_rl_labels {self.cls_rl_labels!r}: expected at least two distinct, "
                                 "non-empty class names")
            self.cls_rl_labels = names
