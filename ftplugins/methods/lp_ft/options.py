"""Options of LP-FT. Kumar et al. (ICLR 2022) train the head alone to convergence, then everything; the switch
point here is an option, in optimizer steps or as a fraction of the run (as transformers' warmup_steps /
warmup_ratio)."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_range


@dataclass
class LpFtOptions:
    lp_ft_probe_ratio: float = field(
        default=0.5,
        metadata={"help": "Fraction of the optimizer steps that train the head alone (linear probing), in (0, 1]; "
                  "the rest fine-tune the whole model, or the adapter given to the trainer. 1 = linear probing "
                  "alone (Florence's linear-probe transfer)."})
    lp_ft_probe_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps of linear probing; when > 0 it overrides lp_ft_probe_ratio (as "
                  "warmup_steps overrides warmup_ratio)."})
    lp_ft_probe_lr: float = field(
        default=0.0,
        metadata={"help": "Learning rate of the optimizer steps that probe (constant); 0 = the run's schedule. The "
                  "paper fits the probe on its own (a head alone takes a larger rate than fine-tuning the whole "
                  "model); the fine-tuning steps keep the run's schedule."})
    lp_ft_restart_schedule: bool = field(
        default=False,
        metadata={"help": "Give the fine-tuning steps the run's learning-rate schedule afresh (its warm-up and decay "
                  "over the steps after the switch; a fractional warmup_steps is a share of those), as when the paper "
                  "fine-tunes after fitting the probe on its own; needs lp_ft_probe_lr (the probing steps' rate). "
                  "Default: one schedule spans both phases."})
    lp_ft_head: list[str] = field(
        default_factory=list,
        metadata={"help": "Names of the head modules (a module path or its last parts, e.g. classifier). Empty: "
                  "'classifier' / 'score' (the names PEFT treats as sequence-classification heads), else the "
                  "model's output embeddings (lm_head)."})

    def __post_init__(self):
        if not 0 < self.lp_ft_probe_ratio <= 1:
            raise ValueError(f"--lp_ft_probe_ratio {self.lp_ft_probe_ratio!r}: expected a fraction in (0, 1] of the "
                             "optimizer steps (0 would be plain fine-tuning: train without lp_ft)")
        check_range("lp_ft_probe_steps", self.lp_ft_probe_steps, 0, 1 << 40)
        check_range("lp_ft_probe_lr", self.lp_ft_probe_lr, 0, 10)
        if self.lp_ft_restart_schedule and not self.lp_ft_probe_lr:
            raise ValueError("--lp_ft_restart_schedule: the probing steps need their own rate when the schedule "
                             "restarts at the switch; give --lp_ft_probe_lr (e.g. 1e-2)")
        if any(not name.strip(".") for name in self.lp_ft_head):
            raise ValueError(f"--lp_ft_head {self.lp_ft_head!r}: expected module names, e.g. classifier")
