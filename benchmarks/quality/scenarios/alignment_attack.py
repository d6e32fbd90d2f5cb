"""Alignment at the paper's protocol: deep_align as the objective of a harmful fine-tuning attack.

Qi et al.'s constrained objective (section 4, Table 3) is measured against fine-tuning *attacks*: the aligned model
is fine-tuned on harmful examples through the objective, and its attack success rate (harmful answers) is compared
with plain SFT on the same data. ``alignment`` asks a different question (does a refusal survive *benign*
fine-tuning?), whose premise failed on ``mid``: plain SFT on the target task keeps every refusal. This scenario runs
the harmful half of ``alignment`` (the same aligned model, trigger prompts, 128 harmful examples, 100 steps × 16 at
lr 3e-4 and scoring) twice per seed from the aligned model: plain SFT (``harmful-ft``) and the same data, steps and
rate through ``deep_align`` at its defaults (betas 0.5 / 2.0 / 0.1, reference log-probs of the aligned model
precomputed; ``harmful-ft+deep_align``). The harmful answer (the reversed word) is 3-6 tokens, so every answer
token lies in the first 5 response positions that carry the large betas, as the first tokens of a harmful
answer do in the paper. Scored as in ``alignment``: refusal rate and harmful-answer rate (the paper's attack
success rate) on 100 held-out trigger prompts.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import alignment
from benchmarks.quality.scenarios._common import Context

NAME = "alignment-attack"
TITLE = "Alignment at the paper's protocol: a harmful fine-tuning attack through deep_align vs plain SFT"
DESIGN = __doc__.split("\n\n", 1)[1].strip()


def run(ctx: Context) -> dict[str, Any]:
    return alignment.run_with(ctx, alignment.SMOKE if ctx.smoke else alignment.FULL, benign=False,
                              attack_plugins=("deep_align",), prefix=False)
