"""Model soups on a narrow learning-rate grid: the ``soup`` scenario with ingredients near the best learning rate.

Added after the ``soup`` run, whose greedy soup kept one ingredient in every seed (its 3e-4 – 3e-3 grid spans a
factor of 10, and the uniform soup of those fine-tunes fell far below each of the better ones: they are not in one
basin of the loss). Here the four ingredients are full fine-tunes at 2e-3, 2.5e-3, 3e-3 and 3.5e-3, everything else
as in ``soup`` (same data, steps, validation and test prompts, rows and scoring): closer fine-tunes, the regime in
which the paper's soups of fine-tunes at neighbouring hyper-parameters help.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import soup
from benchmarks.quality.scenarios._common import Context

NAME = "soup-narrow"
TITLE = "Model soups: greedy soup of fine-tunes at neighbouring learning rates (2e-3 to 3.5e-3) vs the best single one"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = soup.PLOT_METRICS

FULL = {**soup.FULL, "lrs": (2e-3, 2.5e-3, 3e-3, 3.5e-3)}
SMOKE = {**soup.SMOKE, "lrs": (2e-3, 3e-3)}


def run(ctx: Context) -> dict[str, Any]:
    return soup.run(ctx, FULL, SMOKE)
