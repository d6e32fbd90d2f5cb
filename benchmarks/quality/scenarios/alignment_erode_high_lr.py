"""Alignment, diagnosed further: deep_align where benign fine-tuning runs at 3x the learning rate it needs.

On the ``mid`` decoder, plain SFT kept 1.000 of the learned refusals at the alignment scenario's benign rate
(3e-4) and 0.913 at 1e-3 (``alignment-erode``, the rate the ``mid`` sweep chose for full fine-tuning): inside
the claim's 0.2 margin, so deep_align's claim stayed "not comparable" there. This scenario repeats the same
benign half (the same cached aligned model, trigger prompts, target data, scoring, rows ``sft`` and
``deep_align``) at lr 3e-3, the step above the sweep's choice, to ask whether the refusal erodes at all on
``mid`` under benign data, and if it does, whether deep_align keeps it.
"""

from __future__ import annotations

from benchmarks.quality.scenarios import alignment_erode

NAME = "alignment-erode-high-lr"
TITLE = "Alignment, diagnosed: refusals after benign fine-tuning at lr 3e-3 (deep_align vs SFT)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

BENIGN_LR = 3e-3
run = alignment_erode.runner(BENIGN_LR)
