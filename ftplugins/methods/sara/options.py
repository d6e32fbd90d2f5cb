"""Options of SaRA (pure dataclasses: importing this module imports no torch).

Defaults follow the reference (sjtuplayer/SaRA, SD 1.5): τ = 2e-3, λ_rank = 5e-4 on one random 2-D
weight with min(dim) > 64 per step. The reference's progressive step is 2500 of ~5000 steps; here
0 means "half of the run's optimizer steps".
"""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_range

_MANY = float(2**62)


@dataclass
class SaraOptions:
    sara_threshold: float = field(
        default=2e-3,
        metadata={"help": "τ: the entries of each weight with |θ0| < τ train (the 'ineffective' small weights); "
                          "the paper's 2e-3 selects ~10-20% of Stable Diffusion's UNet."},
    )
    sara_progressive_step: int = field(
        default=0,
        metadata={"help": "Optimizer step T_p after which the mask shrinks to M ∧ {|θ_t| < τ} (entries that grew "
                          "past τ freeze at their learned value) and Adam restarts; 0: half of the run's steps; "
                          "-1: never."},
    )
    sara_rank_lambda: float = field(
        default=5e-4,
        metadata={"help": "λ of the low-rank regulariser λ·||(θ - θ0) ⊙ M||_* on one random 2-D weight per step "
                          "(its gradient U Vᵀ restricted to M is added to the compact gradients); 0 disables it."},
    )
    sara_rank_min_dim: int = field(
        default=64,
        metadata={"help": "The regulariser picks among 2-D trained weights whose smaller dimension exceeds this."},
    )
    sara_save_delta: bool = field(
        default=True,
        metadata={"help": "After training, write the sparse delta W - W0 of every trained weight to "
                          "output_dir/sparse_delta.safetensors (apply it with `ftplugins delta apply`)."},
    )

    def __post_init__(self):
        if not (0.0 < self.sara_threshold < _MANY):
            raise ValueError(f"--sara_threshold {self.sara_threshold!r}: expected a positive float")
        check_range("sara_progressive_step", self.sara_progressive_step, -1, _MANY)
        check_range("sara_rank_lambda", self.sara_rank_lambda, 0.0, _MANY)
        check_range("sara_rank_min_dim", self.sara_rank_min_dim, 0, _MANY)
