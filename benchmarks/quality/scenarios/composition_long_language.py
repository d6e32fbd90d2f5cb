"""Composition, diagnosed: the language delta with twice the budget (issue 20).

On ``mid`` the composition's interference faded (composed source-script increment 0.875 vs task-only 1.000; on
``small`` 0.042 vs 0.403), but the language delta alone still did not carry the target script (target-script
addition 0.205), so the composition had no language to transfer the task into. This scenario repeats
``composition`` (the same task data, target script, deltas, composition and scores) with the language delta's
budget doubled: 6,000 target-script examples and 600 + 600 LT-SFT steps × 16 (was 3,000 and 300 + 300); the task
delta is unchanged. The claim is judged as in ``composition``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import composition
from benchmarks.quality.scenarios._common import Context

NAME = "composition-long-language"
TITLE = "LT-SFT composition with twice the language budget: θ0 + Δ_language(target script) + Δ_task(source script)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

FULL = {**composition.FULL, "language_examples": 6_000, "language_steps": 600}


def run(ctx: Context) -> dict[str, Any]:
    return composition.run_with(ctx, composition.SMOKE if ctx.smoke else FULL)
