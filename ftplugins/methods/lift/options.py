"""Options of LIFT (pure dataclasses: importing this module imports no torch).

Defaults follow the spec of the reference (zihanghliu/LIFT, LLaMA-3-8B setting): the mask keeps the
largest entries of the rank-128 approximation of each weight, k = (m + n) * 128 of them (the
parameter count of a rank-128 LoRA), and is re-selected every 400 steps (the LLaMA-2 math setting).
"""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

SVD_KINDS = ("gram", "full", "randomized")
SELECTIONS = ("principal", "magnitude", "random")  # lift_selection: LIFT's rule, then the paper's sparse baselines
_MANY = float(2**62)


@dataclass
class LiftOptions:
    lift_rank: int = field(
        default=128,
        metadata={
            "help": "Rank r_f of the low-rank approximation of each weight whose largest-magnitude entries train "
            "(the 'principal weights'); capped at min(m, n) of each matrix. The paper uses 64 (LLaMA-2-7B) or 128."
        },
    )
    lift_budget_rank: int = field(
        default=128,
        metadata={
            "help": "Trainable entries per m x n weight: k = min((m + n) * lift_budget_rank, m * n), the parameter "
            "count of a LoRA of this rank. Ignored when lift_density is set."
        },
    )
    lift_density: float | None = field(
        default=None,
        metadata={"help": "Fraction of each weight's entries that train, in (0, 1] (e.g. 0.05 for the paper's "
                          "'top 5%'); overrides lift_budget_rank."},
    )
    lift_interval: int = field(
        default=400,
        metadata={
            "help": "Re-select the principal weights from the current weights every this many optimizer steps "
            "(Adam moments carry over for entries that stay selected); 0 keeps the first mask for the whole run."
        },
    )
    lift_svd: str = field(
        default="gram",
        metadata={"help": "How to compute the rank-r_f approximation: 'gram' (top eigenvectors of the smaller Gram "
                          "matrix: the SVD's truncation to fp32 rounding, ~4x faster, a third of the memory), 'full' "
                          "(fp32 SVD, as the paper's code) or 'randomized' (torch.svd_lowrank, seeded; approximate)."},
    )
    lift_selection: str = field(
        default="principal",
        metadata={"help": "Which entries train: 'principal' (LIFT: the largest entries of the rank-r_f approximation), "
                          "or the paper's sparse baselines at the same count: 'magnitude' (the largest |W|) and "
                          "'random' (drawn uniformly, seeded by --seed and the weight's name; the same draw at every "
                          "refresh). The baselines ignore lift_rank and lift_svd."},
    )
    lift_save_delta: bool = field(
        default=True,
        metadata={"help": "After training, write the sparse delta W - W0 of every trained weight to "
                          "output_dir/sparse_delta.safetensors (apply it with `ftplugins delta apply`)."},
    )

    lift_step_in_backward: bool = field(
        default=False,
        metadata={"help": "Update each weight inside the backward, as soon as its gradient arrives (no compact "
                          "gradient kept until the step: 4 bytes less per trained entry). Needs --max_grad_norm 0, "
                          "--gradient_accumulation_steps 1 and one process or FSDP2 (each process updates its rows "
                          "when FSDP's reduce-scatter has averaged their gradient); refused under DDP, where a "
                          "gradient is this process's alone until the engine averages it at the optimizer step. "
                          "Otherwise the same result."},
    )

    def __post_init__(self):
        check_range("lift_rank", self.lift_rank, 1, _MANY)
        check_range("lift_budget_rank", self.lift_budget_rank, 1, _MANY)
        if self.lift_density is not None and not (0.0 < self.lift_density <= 1.0):
            raise ValueError(f"--lift_density {self.lift_density!r}: expected a fraction in (0, 1]")
        check_range("lift_interval", self.lift_interval, 0, _MANY)
        check_choice("lift_svd", self.lift_svd, SVD_KINDS)
        check_choice("lift_selection", self.lift_selection, SELECTIONS)
