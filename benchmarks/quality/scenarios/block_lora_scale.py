"""Why Block-LoRA learned half as well as LoRA on MiniLM: its update scale alpha / r, at LoRA's learning rate.

Added after ``minilm-classification`` (Block-LoRA with the CLIP-LoRA default alpha = 1 at r = 8, an update scale of
1/8, stayed near chance: 0.504 against LoRA's 1.000; alpha 16, LoRA's scale 2, reached 0.830 ± 0.294). With Adam, the
update of ΔW = s·B·[A*, ..., A*] per step grows with s, so the scale acts as a learning-rate multiplier: a default
alpha that does not follow r makes LoRA's learning rates wrong for Block-LoRA by a factor that changes with the rank.
Same task, data, test set, steps, schedule and learning rate (1e-3, LoRA's) as ``minilm-classification``; Block-LoRA
r = 8 on q/k/v, no dropout, at alpha = 1, 4, 8, 16, 32 (scale 1/8, 1/2, 1, 2, 4), plus ``block_lora-a1-lr16x``
(alpha 1 at 16 × the learning rate, 1.6e-2: scale 1/8 × 16 = LoRA's 2, if the scale is only a learning rate) and
the LoRA r = 8 reference (alpha 16, scale 2). Shown, not judged: the rows choose Block-LoRA's default alpha.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import minilm_classification as base
from benchmarks.quality.scenarios._common import Context

NAME = "block-lora-scale"
TITLE = "Block-LoRA's update scale alpha / r on MiniLM at LoRA's learning rate"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("accuracy",)
ALPHAS = (1.0, 4.0, 8.0, 16.0, 32.0)
RANK, LR = 8, 1e-3


def block_lora_row(alpha: float, lr: float = LR) -> tuple:
    return (("block_lora",), {"block_lora_r": RANK, "block_lora_alpha": alpha, "block_lora_dropout": 0.0}, lr, None)


ROWS = {"lora-r8": base.ROWS["lora-r8"],
        **{f"block_lora-a{alpha:g}": block_lora_row(alpha) for alpha in ALPHAS},
        "block_lora-a1-lr16x": block_lora_row(1.0, 16 * LR)}
SMOKE_ROWS = ("lora-r8", "block_lora-a16")


def run(ctx: Context) -> dict[str, Any]:
    notes = {"lora-r8": "PEFT LoRA r=8 (alpha 16, scale 2), every linear layer, lr 1e-3",
             "block_lora-a1-lr16x": "Block-LoRA r=8, alpha 1 (scale 1/8), lr 1.6e-2 (16x)"}
    notes.update({f"block_lora-a{a:g}": f"Block-LoRA r=8 on q/k/v, alpha {a:g} (scale {a / RANK:g}), lr 1e-3"
                  for a in ALPHAS})
    return base.run_rows(ctx, ROWS, SMOKE_ROWS, notes)
