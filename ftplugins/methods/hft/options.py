"""Options of HFT (pure dataclasses: importing this module imports no torch)."""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

REDRAW = ("stage", "epoch")


@dataclass
class HftOptions:
    hft_seed: int = field(
        default=-1,
        metadata={"help": "Seed of the random choice of the frozen half (a private torch.Generator; the global RNG "
                          "is not touched); -1 uses the trainer's --seed."},
    )
    hft_redraw: str = field(
        default="stage",
        metadata={"help": "When to draw a new frozen half: 'stage' (once per run/trainer, as the paper's Fig. 2 and "
                          "the SSU re-implementation) or 'epoch' (a new draw at the start of every epoch; Adam moments "
                          "of tensors that stay trainable carry over, newly trainable tensors start from zero)."},
    )

    def __post_init__(self):
        check_range("hft_seed", self.hft_seed, -1, float(2**63 - 1))
        check_choice("hft_redraw", self.hft_redraw, REDRAW)
