"""LP-FT, diagnosed: the same shift on sentences whose sentiment the pre-trained features already carry.

LP-FT's argument (Kumar et al.) needs pre-trained features that already solve the task: a probe fitted on them is
good in and out of distribution, and fine-tuning from a random head distorts them where LP-FT keeps them. In
``minilm-shift`` they do not: a negation flips the label, and the fitted probe reaches only about 0.62 ID and OOD, so
both rows have to rebuild the features and the premise is not there. This variant asks whether the claim holds where
it is: everything is ``minilm-shift``'s (the MiniLM encoder, 64 training sentences a seed, the ID/OOD word split,
rows ``ft``, ``lp-ft``, ``lp`` and their steps, each fine-tuning rate chosen on ID validation among 3e-5 / 1e-4 /
3e-4), except the sentences: no negation, so the label is the adjective's polarity, and two neutral slots so that the
sentence space holds the seeds' training, test and validation sets disjointly: ``<determiner> <noun> <was|is>
[really|very] <adjective>`` with determiners the / this / that / my / our (3,000 ID sentences, 1,500 OOD). A one-seed
look outside the harness before this variant was written (the same sentences without the added slots, 150 OOD):
the probe 0.98 OOD; ``ft`` 1.00 at 1e-4, 0.91 at 3e-4; ``lp-ft`` 1.00 at both.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import minilm_shift
from benchmarks.quality.scenarios._common import Context

NAME = "minilm-shift-plain"
TITLE = "MiniLM encoder, sentiment without negation (the probe reads it) with unseen words OOD: LP-FT vs fine-tuning"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False  # the MiniLM encoder only

GRAMMAR = {"determiners": ["the", "this", "that", "my", "our"], "verbs": ["was", "is"], "negations": [""],
           "intensifiers": minilm_shift.INTENSIFIERS}


def run(ctx: Context) -> dict[str, Any]:
    result = minilm_shift.run_with(ctx, GRAMMAR)
    result["config"] = {**result["config"], "grammar": GRAMMAR}
    return result
