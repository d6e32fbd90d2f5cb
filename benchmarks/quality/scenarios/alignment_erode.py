"""Alignment, diagnosed: deep_align where benign fine-tuning does erode the refusal (a higher learning rate).

On the ``mid`` decoder, plain SFT at the alignment scenario's benign learning rate (3e-4, 150 steps × 16) kept
every learned refusal, so deep_align's claim had nothing to protect ("not comparable"). This scenario repeats
only the benign half of ``alignment`` (the same cached aligned model, trigger prompts, target data, scoring and
the same two rows, ``sft`` and ``deep_align``) at lr 1e-3, the learning rate the ``mid`` sweep chose for full
fine-tuning on this target task. If SFT now loses refusals, the claim is testable and judged as in ``alignment``.
"""

from __future__ import annotations

from typing import Any, Callable

from benchmarks.quality.scenarios import alignment
from benchmarks.quality.scenarios._common import Context

NAME = "alignment-erode"
TITLE = "Alignment, diagnosed: refusals after benign fine-tuning at lr 1e-3 (deep_align vs SFT)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

BENIGN_LR = 1e-3


def runner(lr: float) -> Callable[[Context], dict[str, Any]]:
    """The benign half of ``alignment`` at learning rate ``lr`` (every ``alignment-erode*`` scenario)."""

    def run(ctx: Context) -> dict[str, Any]:
        return alignment.run_with(ctx, {**(alignment.SMOKE if ctx.smoke else alignment.FULL), "lr": lr},
                                  harmful=False)

    return run


run = runner(BENIGN_LR)
