"""Options of the ``block_lora`` plugin (pure dataclasses: importing this module imports no torch)."""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field
from typing import Optional

from ftplugins.options import check_range

#: ``--block_lora_target_modules all-linear`` adapts every linear layer except the output head.
ALL_LINEAR = "all-linear"


@dataclass
class BlockLoraOptions:
    block_lora_n: int = field(
        default=8,
        metadata={
            "help": "Number of input blocks n sharing one down-projection A* (the 'eight arms' of the title). Every "
            "adapted layer's input size must be divisible by n."
        },
    )
    block_lora_r: int = field(default=2, metadata={"help": "Rank r of the update (CLIP-LoRA's default, 2)."})
    block_lora_alpha: Optional[float] = field(
        default=None,
        metadata={
            "help": "Scaling numerator: the update is (alpha / r)·B·[A*, ..., A*]. Default r (scale 1 at every rank, "
            "as PEFT's LoraConfig defaults); with Adam the scale multiplies the learning rate, so if Block-LoRA "
            "learns slowly raise the learning rate (CLIP-LoRA's protocol: alpha 1 at r = 2)."
        },
    )
    block_lora_dropout: float = field(
        default=0.25, metadata={"help": "Dropout on the adapter's input, in [0, 1) (CLIP-LoRA's default, 0.25)."}
    )
    block_lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (or name suffixes) to adapt, or 'all-linear' for every linear layer except the "
            "output head. Default: the attention query/key/value projections (q_proj/k_proj/v_proj, query/key/value, "
            "to_q/to_k/to_v), as in CLIP-LoRA."
        },
    )
    block_lora_exclude_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names (or name suffixes) to leave untouched."}
    )
    block_lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter. Default: the classifier head of sequence / "
            "image classification models, nothing otherwise. Pass an empty list for none."
        },
    )

    def __post_init__(self):
        check_positive_int("block_lora_n", self.block_lora_n)
        check_positive_int("block_lora_r", self.block_lora_r)
        if self.block_lora_alpha is None:
            self.block_lora_alpha = default_alpha(self.block_lora_r)
        if not self.block_lora_alpha > 0:
            raise ValueError(f"--block_lora_alpha {self.block_lora_alpha!r}: expected a value > 0")
        check_range("block_lora_dropout", self.block_lora_dropout, 0.0, 1.0)
        if self.block_lora_dropout == 1.0:
            raise ValueError("--block_lora_dropout 1.0: expected a value in [0, 1); 1 would drop every input")


def default_alpha(r: int) -> float:
    """alpha = r: the update scale alpha / r is 1 at every rank (PEFT LoraConfig's default r = alpha = 8). With Adam
    the scale acts as a learning-rate multiplier, so a fixed alpha (CLIP-LoRA's 1) makes LoRA's learning rates r times
    too small for Block-LoRA, a factor that moves with the rank (BENCHMARKS.md, ``block-lora-scale``)."""
    return float(r)


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name} {value!r}: expected an integer >= 1")
