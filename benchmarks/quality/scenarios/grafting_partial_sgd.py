"""Grafting, diagnosed in the paper's full regime: a partly solved task, fine-tuned by plain SGD.

``grafting-partial`` starts from a model that partly solves the task (AdamW fine-tuning: the 1% graft recovers 3% of
the improvement); ``grafting-sgd`` fine-tunes by the paper's SGD from the pre-trained model. This one does both, as
the paper's prompt-based SGD fine-tunes do: θ_pre is ``grafting-partial``'s starting model and the fine-tuning is
``grafting-sgd``'s (plain SGD at lr 3.0, weight decay 1e-4, embeddings and LM head frozen; the rate chosen there from
the pre-trained start, not chosen again here). Rows, scores and columns are ``grafting-partial``'s (without its mask
learning-rate rows) plus ``graft-3pct``; the share of the improvement recovered is the column to read, since θ_pre
alone carries about half of the paper's ratio. Its own claim variant.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import grafting, grafting_partial, grafting_sgd
from benchmarks.quality.scenarios._common import Context

NAME = "grafting-partial-sgd"
TITLE = "Grafting from a model that partly solves the task, fine-tuned by the paper's SGD: a ≤1% region of its changes"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("target", "ratio", "gain")


def run(ctx: Context) -> dict[str, Any]:
    cfg = {**(grafting.SMOKE if ctx.smoke else grafting.FULL), "lr": grafting_sgd.SGD_LR}
    result = grafting_partial.run_from_partial(ctx, cfg, optim="sgd", weight_decay=grafting_sgd.WEIGHT_DECAY,
                                               frozen=grafting_sgd.FROZEN, more_densities=(0.03,))
    result["config"] = {**result["config"], "optim": "sgd", "weight_decay": grafting_sgd.WEIGHT_DECAY,
                        "frozen": list(grafting_sgd.FROZEN)}
    return result
