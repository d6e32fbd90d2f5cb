"""select_influence: DEALRec data pruning (Lin et al., "Data-efficient Fine-tuning for LLM-based Recommendation",
SIGIR 2024) for generic SFT data.

Each train row gets an influence score (how much it moves the empirical risk, by inverse-Hessian-vector products
with LiSSA on a small surrogate: no Hessian is formed) plus an effort score (the fine-tuned model's gradient norm on
it), combined with lambda; coverage-enhanced sampling then draws across 50 score strata.

* Plugin: ``--plugins select_influence --select_influence_budget 0.02`` selects the train split in
  ``transform_dataset`` (the surrogate defaults to the model being fine-tuned; set ``select_influence_surrogate``);
  the report goes to OUTPUT_DIR/select_influence_report.json.
* Offline: ``ftplugins select influence --data train.jsonl --model MODEL --budget 1024 -o selected.jsonl``.
* Python: ``ftplugins.data.select("influence", dataset, 1024, model=model, tokenizer=tokenizer)``.
"""

from __future__ import annotations

from ftplugins.data.plugin_support import select_train_split
from ftplugins.distributed_reasons import BEFORE_SHARDING_FSDP, BEFORE_SHARDING_ZERO
from ftplugins.plugin import Plugin, hookimpl

from .options import SelectInfluenceOptions


class SelectInfluencePlugin(Plugin):
    name = "select_influence"
    summary = "DEALRec data pruning: LiSSA influence on a surrogate + effort (gradient norm), coverage sampling."
    paper = ("Data-efficient Fine-tuning for LLM-based Recommendation, Lin et al., SIGIR 2024, arXiv:2401.17197")
    options = SelectInfluenceOptions
    # One plugin per role of a run (ftplugins.combinations): two selections in a row would depend on their order.
    claims = {"row_selection": "keeps the rows of highest influence + effort, across score strata"}
    requires = {}  # torch only: no faiss, no POT
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": BEFORE_SHARDING_FSDP, "deepspeed": BEFORE_SHARDING_ZERO}  # per-row gradients
    trainers = ("SFTTrainer",)  # losses over prompt/completion or text rows

    def choose(self, pool, budget, settings, context):
        from .choose import choose

        return choose(pool, budget, settings, context)

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        return select_train_split(self, run, dataset, split)


plugin = SelectInfluencePlugin()
