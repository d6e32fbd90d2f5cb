"""select_ot: GOT-D optimal-transport data selection (Kang et al., "Get more for less", ICLR 2024).

Select the candidates that nudge the pre-training distribution toward the target distribution: embed the pool
and a small target set, solve entropic OT between them (chunked log-domain Sinkhorn: the cost matrix is never
held whole, so a million candidates fit in a few GB), calibrate the candidates' dual potentials as LAVA does and
keep the most negative.

* Plugin: ``--plugins select_ot --select_ot_target target.jsonl --select_ot_budget 0.1`` selects the train split
  in ``transform_dataset``; the report goes to OUTPUT_DIR/select_ot_report.json.
* Offline: ``ftplugins select ot --data pool.jsonl --target target.jsonl --budget 5000 -o selected.jsonl``.
* Python: ``ftplugins.data.select("ot", pool, 5000, target=target_dataset)``.

Embeddings come from a sentence encoder (default MiniLM), the model being fine-tuned (``encoder=model``), or its
per-row gradients w.r.t. a LoRA's / the last block's parameters projected to ``gradient_dim`` (``encoder=gradients``).
"""

from __future__ import annotations

from ftplugins.data.plugin_support import REQUIRES, select_train_split
from ftplugins.distributed_reasons import untested
from ftplugins.plugin import TEXT_TRAINERS, Plugin, hookimpl

from .options import SelectOtOptions


class SelectOtPlugin(Plugin):
    name = "select_ot"
    summary = "GOT-D data selection: OT dual potentials toward a target set, most negative calibrated gradient first."
    paper = ("Get more for less: Principled Data Selection for Warming Up Fine-Tuning in LLMs, Kang et al., "
             "ICLR 2024, arXiv:2405.02774")
    options = SelectOtOptions
    # One plugin per role of a run (ftplugins.combinations): two selections in a row would depend on their order.
    claims = {"row_selection": "keeps the rows that move the pool toward the target set fastest (OT)"}
    requires = REQUIRES
    trainers = TEXT_TRAINERS  # selects text rows: not a diffusion denoiser's images
    distributed = ("single", "ddp")
    distributed_refusals = {mode: untested(mode, "selection runs before training, by default with its own sentence "
                                                 "encoder") for mode in ("fsdp", "deepspeed")}

    def choose(self, pool, budget, settings, context):
        from .choose import choose

        return choose(pool, budget, settings, context)

    @hookimpl
    def validate(self, run):
        from ftplugins.errors import FtpluginsError

        if not run.options_for(self).select_ot_target:
            raise FtpluginsError(
                "select_ot needs a target set: set --select_ot_target PATH (rows like the task you fine-tune for)."
            )

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        return select_train_split(self, run, dataset, split)


plugin = SelectOtPlugin()
