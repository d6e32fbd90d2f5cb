"""Composition, diagnosed further: from a base that knows the target script as well as the source one.

``composition-bilingual``'s base saw the target script at a quarter of the source examples (a low-resource
language) and nothing transferred. This scenario asks whether anything can: its base θ0'' is built the same way with
the target script at an equal share (4,000 target-script examples of ``add`` / ``add_steps`` / ``count`` beside the
4,000 source-script pre-training examples, 600 steps × 32 at lr 1e-3, seed 0; cached). Everything else is
``composition-bilingual``'s. If the source-script task delta does not run in the target script even from a base that
does its arithmetic in both, the task delta has learned rules on the source symbols, not on the numbers they stand
for, and no language delta can route it.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import composition_bilingual
from benchmarks.quality.scenarios._common import Context

NAME = "composition-bilingual-equal"
TITLE = "LT-SFT composition from a base that knows both scripts equally: θ0'' + Δ_language + Δ_task"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

FULL_BASE = {**composition_bilingual.FULL_BASE, "target_examples": 4_000}


def run(ctx: Context) -> dict[str, Any]:
    return composition_bilingual.run_with(
        ctx, composition_bilingual.SMOKE_BASE if ctx.smoke else FULL_BASE,
        base_note="θ0'': the pre-trained decoder after SFT on its tasks with add / add_steps / count also in the "
                  "target script (as many examples as the source script)")
