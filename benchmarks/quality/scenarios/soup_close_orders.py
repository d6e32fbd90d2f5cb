"""Model soups of one shared warm-up's continuations that differ only in data order (same learning rate).

Added after the ``soup-close`` run, whose ingredients at 1e-4 – 4e-4 were still ranked by learning rate (the highest
best in every seed), so averaging pulled the best one towards weaker ones. Here the four ingredients continue the
same warm-up at one learning rate, 4e-4 (``soup-close``'s best), for the same steps, each with its own data order
(shuffling seed ``100 * seed + i``): the paper's ingredients that differ only in randomness. Everything else (data,
warm-up, prompts, rows, scoring, claim) as in ``soup-close``; rows ``ft-4e-04-order<i>`` are the ingredients.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import soup_close
from benchmarks.quality.scenarios._common import Context

NAME = "soup-close-orders"
TITLE = "Model soups: greedy soup of same-lr continuations of one warm-up fine-tune that differ in data order"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = soup_close.PLOT_METRICS

FULL = {**soup_close.FULL, "lrs": (4e-4,) * 4}
SMOKE = {**soup_close.SMOKE, "lrs": (3e-4, 3e-4)}


def run(ctx: Context) -> dict[str, Any]:
    return soup_close.run(ctx, FULL, SMOKE)
