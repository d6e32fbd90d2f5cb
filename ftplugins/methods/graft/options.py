"""Options of grafting (pure dataclasses: importing this module imports no torch).

Defaults follow the reference (abhishekpanigrahi1996/Skill-Localization-by-grafting) where it has
one: sigmoid bias b = 10, lr 1e7, 10 epochs; ρ = 1e-3 is larger than the example script's 1e-7
because the models here are small (ρN must be at least one entry).
"""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_range

_MANY = float(2**62)


@dataclass
class GraftOptions:
    graft_density: float = field(
        default=1e-3,
        metadata={"help": "ρ: the base patch is the top floor(ρN) entries of the region by |θ_ft - θ_pre| (N: the "
                          "region's entries), in (0, 1]. The paper's regions are about 1e-4."},
    )
    graft_sigmoid_bias: float = field(
        default=10.0,
        metadata={"help": "b: the relaxed mask is γ = s + (1 - 2s) σ(S - b); with b = 10, γ ≈ s at the start "
                          "(reference default 10)."},
    )
    graft_lr: float = field(
        default=1e7,
        metadata={"help": "Learning rate of plain SGD on the mask scores S (reference default 1e7: the gradient "
                          "is scaled by σ'(S - b) ≈ 4.5e-5 and by δ). Scale-dependent: where the loss is already "
                          "low, no entry flips at 1e7 and the graft stays the base patch (the run warns; the "
                          "result's history counts the flipped entries); raise it, with graft_hold_density to keep "
                          "the budget."},
    )
    graft_epochs: int = field(
        default=10,
        metadata={"help": "Epochs of mask optimisation; each accumulates gradients over the batches, takes one "
                          "SGD step on S and evaluates the rounded mask (reference: 10-100)."},
    )
    graft_max_batches: int = field(
        default=128,
        metadata={"help": "At most this many batches of the train dataloader are used per epoch (and for the "
                          "evaluation); they are kept in memory for the whole graft."},
    )
    graft_hold_density: bool = field(
        default=False,
        metadata={"help": "Make ρ a guarantee: project every rounded mask to its top floor(ρN) entries by γ. The "
                          "paper bounds only the base patch, and the learnt mask may grow beyond ρ (off: the "
                          "paper's behaviour)."},
    )
    graft_finetuned_path: str = field(
        default="",
        metadata={"help": "Folder (save_pretrained) of the fine-tuned model θ_ft; empty: θ_ft is the model this "
                          "run trained. θ_pre is always the model as it was before training."},
    )
    graft_save_delta: bool = field(
        default=True,
        metadata={"help": "After grafting, write the graft γ⊙δ as a sparse delta to "
                          "output_dir/graft_delta.safetensors (apply it to θ_pre with `ftplugins delta apply`)."},
    )

    def __post_init__(self):
        if not (0.0 < self.graft_density <= 1.0):
            raise ValueError(f"--graft_density {self.graft_density!r}: expected a fraction in (0, 1]")
        check_range("graft_sigmoid_bias", self.graft_sigmoid_bias, -_MANY, _MANY)
        if not (self.graft_lr > 0.0):
            raise ValueError(f"--graft_lr {self.graft_lr!r}: expected a positive learning rate")
        check_range("graft_lr", self.graft_lr, 0.0, _MANY)
        check_range("graft_epochs", self.graft_epochs, 0, _MANY)
        check_range("graft_max_batches", self.graft_max_batches, 1, _MANY)
