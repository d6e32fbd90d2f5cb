"""Alignment, diagnosed between: deep_align at a benign learning rate between the robust and the erased refusal.

On the ``mid`` decoder plain SFT kept 0.913 of the learned refusals at lr 1e-3 (``alignment-erode``) and none at
3e-3 (``alignment-erode-high-lr``), where deep_align lost them too (0.010). This scenario repeats the same benign
half (the same cached aligned model, trigger prompts, target data, scoring, rows ``sft`` and ``deep_align``) at
lr 1.7e-3, the geometric middle, where SFT might erode the refusal partly: the regime in which deep_align's
token-wise constraint could show what it protects.
"""

from __future__ import annotations

from benchmarks.quality.scenarios import alignment_erode

NAME = "alignment-erode-between"
TITLE = "Alignment, diagnosed: refusals after benign fine-tuning at lr 1.7e-3 (deep_align vs SFT)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

BENIGN_LR = 1.7e-3
run = alignment_erode.runner(BENIGN_LR)
