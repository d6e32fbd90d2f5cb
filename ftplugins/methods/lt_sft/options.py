"""Options of LT-SFT (pure dataclasses: importing this module imports no torch).

Defaults follow the reference (cambridgeltl/composable-sft): K = 1% of the maskable entries, one
iteration, no L1 (its task-SFT setting; language SFTs use λ = 0.1), equal budgets for both phases.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_range

_MANY = float(2**62)


@dataclass
class LtSftOptions:
    lt_sft_k: int = field(
        default=-1,
        metadata={"help": "K: how many entries of the base model (all parameters except the output head) train in "
                          "phase 2, chosen globally across tensors; -1 uses lt_sft_proportion."},
    )
    lt_sft_proportion: float = field(
        default=0.01,
        metadata={"help": "K as a fraction of the maskable entries, in (0, 1] (reference default 0.01); ignored "
                          "when lt_sft_k is set."},
    )
    lt_sft_phase1_steps: int = field(
        default=-1,
        metadata={"help": "Optimizer steps of phase 1 (full fine-tuning that finds the ticket), run before the "
                          "Trainer's loop; -1: as many as phase 2 (the Trainer's max_steps, or its epochs' steps), "
                          "the reference's equal budget per phase."},
    )
    lt_sft_iterations: int = field(
        default=1,
        metadata={"help": "n: iterations of (phase 1, select K/n more entries, reset, phase 2 on every entry selected "
                          "so far); the first n-1 run before the Trainer's loop, which is the last phase 2 (1: the "
                          "reference default)."},
    )
    lt_sft_l1: float = field(
        default=0.0,
        metadata={"help": "λ of the L1 pull toward the base weights in phase 2, λ Σ|θ - θ0| / N with N the number of "
                          "maskable entries (reference: 0.1 for language SFTs, 0 for task SFTs)."},
    )
    lt_sft_save_delta: bool = field(
        default=True,
        metadata={"help": "After training, write the sparse delta θ - θ0 (the output head dense) to "
                          "output_dir/sparse_delta.safetensors (apply/compose it with `ftplugins delta`)."},
    )

    def __post_init__(self):
        if self.lt_sft_k != -1:
            check_range("lt_sft_k", self.lt_sft_k, 1, _MANY)
        if not (0.0 < self.lt_sft_proportion <= 1.0):
            raise ValueError(f"--lt_sft_proportion {self.lt_sft_proportion!r}: expected a fraction in (0, 1]")
        if self.lt_sft_phase1_steps != -1:
            check_range("lt_sft_phase1_steps", self.lt_sft_phase1_steps, 1, _MANY)
        check_range("lt_sft_iterations", self.lt_sft_iterations, 1, 1000)
        check_range("lt_sft_l1", self.lt_sft_l1, 0.0, _MANY)
