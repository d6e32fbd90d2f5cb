"""Options of LocFT-BF (pure dataclasses: importing this module imports no torch).

Defaults follow the reference (ICT-STAR/LocFT, Llama-3-8B-Instruct): the module
``model.layers.22.mlp.down_proj``, minibatches of 100 edits, stop when the epoch loss is below 1e-2.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

_MANY = float(2**62)
SEPARATORS = ("auto", "space", "none")


@dataclass
class LocftOptions:
    locft_modules: str = field(
        default="model.layers.22.mlp.down_proj",
        metadata={"help": "Comma-separated module names to fine-tune, matched EXACTLY against "
                          "model.named_modules() (the paper's Llama-3-8B choice by default; Qwen2.5-7B: "
                          "model.layers.6.mlp.down_proj). Everything else is frozen."},
    )
    locft_batch_size: int = field(
        default=100,
        metadata={"help": "Edits per update (one minibatch; sets per_device_train_batch_size). One epoch visits "
                          "every edit once in shuffled minibatches: the breadth-first schedule."},
    )
    locft_threshold: float = field(
        default=1e-2,
        metadata={"help": "Stop training at the end of the first epoch whose mean minibatch loss is below this."},
    )
    locft_skip_loss: float = field(
        default=1e-2,
        metadata={"help": "Skip the update of a minibatch whose loss is already below this (edits it holds "
                          "are learnt)."},
    )
    locft_target_column: str = field(
        default="target",
        metadata={"help": "Dataset column holding the new answer; the prompt is the 'prompt' column. Rows become "
                          "prompt -> separator + answer + EOS (use 'answer' for the built-in arithmetic set)."},
    )
    locft_separator: str = field(
        default="auto",
        metadata={"help": "Text between prompt and answer: 'space' (the reference's ' '), 'none', or 'auto' (a "
                          "space unless the tokenizer cannot encode one, e.g. a vocabulary without a space token, "
                          "where a space would train on <unk>)."},
    )

    def __post_init__(self):
        if not [m for m in self.locft_modules.split(",") if m.strip()]:
            raise ValueError("--locft_modules '': expected at least one module name")
        check_range("locft_batch_size", self.locft_batch_size, 1, _MANY)
        check_range("locft_threshold", self.locft_threshold, 0.0, _MANY)
        check_range("locft_skip_loss", self.locft_skip_loss, 0.0, _MANY)
        check_choice("locft_separator", self.locft_separator, SEPARATORS)
        if not self.locft_target_column:
            raise ValueError("--locft_target_column '': expected a column name")
