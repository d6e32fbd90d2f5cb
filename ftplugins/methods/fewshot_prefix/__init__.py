"""Few-shot-prefixed SFT and the weak->gold sequential SFT recipe.

"Balancing Label Quantity and Quality for Scalable Elicitation" (Mallen & Belrose, arXiv:2410.13215;
reference code EleutherAI/scalable-elicitation). Two of its regimes:

* **Few-shot-prompted SFT** (this plugin, a ``transform_dataset`` hook): every train and eval prompt is
  preceded by ``fewshot_prefix_k`` in-context examples drawn from a pool disjoint from the SFT targets,
  reshuffled per row. The pool is ``fewshot_prefix_pool_size`` train rows held out with the run's seed
  (default), or a separate file/folder (``fewshot_prefix_pool_path``); eval splits are prefixed from the
  same pool. Rendering, seeding and disjointness rules: :mod:`.prefixing`. ``fewshot_prefix_k=0`` leaves the
  datasets untouched (plain SFT).
* **Weak -> gold sequential SFT** (not a hook; a function): stage 1 on weak labels, stage 2 on gold labels
  from the stage-1 weights with a fresh optimiser, with the label cost reported:
  :func:`ftplugins.methods.fewshot_prefix.weak_to_gold.train_weak_then_gold`.

Choices that are ours (the paper's code is classification-oriented): an example is rendered as its
prompt + completion; examples and the prompt are joined by a blank line; the held-out pool is drawn once
per run; k defaults to 4. This module imports no torch.
"""

from __future__ import annotations

import logging

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import FewshotPrefixOptions

logger = logging.getLogger("ftplugins.fewshot_prefix")


class FewshotPrefixPlugin(Plugin):
    name = "fewshot_prefix"
    summary = "Few-shot-prefixed SFT: k in-context examples from a disjoint pool before every train/eval prompt."
    paper = "Balancing Label Quantity and Quality for Scalable Elicitation, Mallen & Belrose, arXiv:2410.13215"
    options = FewshotPrefixOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "in_context_examples": "puts k pool examples before every prompt",
    }
    trainers = ("SFTTrainer",)
    # Only the prompts change; the pool is drawn from the seed, the same in every process.
    distributed = ("single", "ddp", "fsdp", "deepspeed")

    @hookimpl
    def validate(self, run):
        opts, args = run.options_for(self), run.args
        if args is not None and opts.fewshot_prefix_k > 0 and getattr(args, "completion_only_loss", None) is False:
            raise FtpluginsError(
                "fewshot_prefix puts pool examples in the prompt as context, and completion_only_loss=False would "
                "train on them (the pool must stay disjoint from the targets); leave completion_only_loss unset."
            )

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from .prefixing import drop_pool_examples, load_pool, prefix_dataset, split_pool

        opts = run.options_for(self)
        k = opts.fewshot_prefix_k
        if k == 0:
            return None  # plain SFT: no pool, rows untouched
        seed = getattr(run.args, "seed", 0)
        state = run.state.setdefault(self.name, {})
        if "pool" not in state:
            if opts.fewshot_prefix_pool_path:
                state["pool"] = load_pool(opts.fewshot_prefix_pool_path)
            elif split == "train":
                dataset, state["pool"] = split_pool(dataset, opts.fewshot_prefix_pool_size, seed)
            else:
                raise FtpluginsError(
                    f"fewshot_prefix: the {split} split needs the in-context pool, which is held out of the train "
                    "split, and there is no train split; give a pool with fewshot_prefix_pool_path."
                )
        pool = state["pool"]
        if split == "train":
            dataset = drop_pool_examples(dataset, pool, split)
            state["report"] = {"pool_size": len(pool), "train_rows": len(dataset), "k": k}
            logger.info("fewshot_prefix: pool of %d example(s), %d train row(s), k=%d", len(pool), len(dataset), k)
        return prefix_dataset(dataset, pool, k=k, seed=seed, split=split, separator=opts.fewshot_prefix_separator,
                              lead=opts.fewshot_prefix_lead, query_separator=opts.fewshot_prefix_query_separator)


plugin = FewshotPrefixPlugin()
