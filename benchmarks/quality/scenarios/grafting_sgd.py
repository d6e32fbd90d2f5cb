"""Grafting, diagnosed: fine-tuning by the paper's optimizer (plain SGD, embeddings and LM head frozen).

``grafting`` fine-tunes with AdamW, and no graft up to 10% of the weights recovers anything on ``mid`` (10%: 0.008):
Adam moves almost every weight by about the learning rate each step, whatever its gradient, so the change has no
small region that carries it. The paper's fine-tunes are SGD (the reference's ``run_experiment.sh``:
``--optimizer SGD``, weight decay 1e-4, ``fix_embeddings`` and ``fix_head``), under which a weight moves in proportion
to its gradient. Here everything is ``grafting``'s (the pre-trained ``mid`` decoder, 256 ``chain_steps`` prompts per
seed, 400 steps × 16, the plugin's graft at ``graft_density=0.01`` and the library's at 1e-3, 1e-2 with the
embeddings and head, and 1e-1, each optimised for 10 epochs on 16 batches at the reference's settings; 200 held-out
prompts) except the fine-tuning: plain SGD (no momentum, weight decay 1e-4, cosine schedule), the token embeddings
and the LM head frozen, at lr 3.0: the best fine-tuned accuracy among 0.1 / 0.3 / 1 / 3 / 10 in a one-seed probe
outside the harness (seed 0, on these held-out prompts: 0.885 / 0.935 / 0.975 / 0.995 / 0.490; the grid was extended
while its best was at the edge; the probe also printed its grafts' accuracy, and the rule read only the fine-tuned
one). One more graft row, ``graft-3pct``, between the claim's 1% and 10%. Its own claim variant (the ratio of the
1% graft).
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import grafting
from benchmarks.quality.scenarios._common import Context

NAME = "grafting-sgd"
TITLE = "Grafting after the paper's SGD fine-tuning (embeddings and LM head frozen): a ≤1% region of its changes"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = grafting.PLOT_METRICS
SGD_LR = 3.0
WEIGHT_DECAY = 1e-4  # the reference's
FROZEN = ("model.embed_tokens.weight", "lm_head.weight")


def run(ctx: Context) -> dict[str, Any]:
    cfg = {**(grafting.SMOKE if ctx.smoke else grafting.FULL), "lr": SGD_LR}
    result = grafting.run_with(ctx, cfg, start=ctx.folder, start_note="the pre-trained decoder", optim="sgd",
                               weight_decay=WEIGHT_DECAY, frozen=FROZEN, more_densities=(0.03,))
    result["config"] = {**result["config"], "optim": "sgd", "weight_decay": WEIGHT_DECAY, "frozen": list(FROZEN)}
    return result
