"""select_kmeans: Diversify and Conquer's kMQ data selection (Yu et al., 2024; for-ai/iterative-data-selection).

Embed every train row (a sentence encoder, or the model being fine-tuned), cluster the embeddings with faiss
k-means, and fill each cluster's share of the budget (proportional to its size) by quality-weighted draws
(perplexity under the model, or your own scorer). Diversity first: every region of the pool is represented.

* Plugin: selects the train split in ``transform_dataset``, before training (``--plugins select_kmeans
  --select_kmeans_budget 0.05``); the report goes to OUTPUT_DIR/select_kmeans_report.json.
* Offline: ``ftplugins select kmeans --data train.jsonl --budget 5000 -o selected.jsonl``.
* Python: ``ftplugins.data.select("kmeans", dataset, 5000, clusters=64)``.

The iterative variant (train on the rows selected so far, reweight clusters by how far the model still is from the
answers of rows held out of each cluster, draw the next slice from the unselected rows): ``--select_kmeans_rounds R``
in the plugin (the rounds are epochs of the run: a callback draws the next slice between them, :mod:`.rounds`), or
:func:`select_iteratively` in Python with your own training step between rounds.
"""

from __future__ import annotations

from ftplugins.data.plugin_support import REQUIRES, select_train_split
from ftplugins.distributed_reasons import BEFORE_SHARDING_FSDP, BEFORE_SHARDING_ZERO
from ftplugins.plugin import TEXT_TRAINERS, Plugin, hookimpl

from .options import SelectKmeansOptions


def select_iteratively(data, budget, train_round, **kwargs):
    """Iterative kMQ; see :func:`.iterative.select_iteratively` (imports torch and faiss lazily)."""
    from .iterative import select_iteratively as run

    return run(data, budget, train_round, **kwargs)


class SelectKmeansPlugin(Plugin):
    name = "select_kmeans"
    summary = "kMQ data selection: k-means over embeddings, per-cluster shares drawn by quality (before training)."
    paper = ("Diversify and Conquer: Diversity-Centric Data Selection with Iterative Refinement, Yu et al., "
             "arXiv:2409.11378")
    options = SelectKmeansOptions
    # One plugin per role of a run (ftplugins.combinations): two selections in a row would depend on their order.
    claims = {"row_selection": "keeps each embedding cluster's share of the budget (kMQ)"}
    requires = REQUIRES
    trainers = TEXT_TRAINERS  # selects text rows: not a diffusion denoiser's images
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": BEFORE_SHARDING_FSDP, "deepspeed": BEFORE_SHARDING_ZERO}  # perplexities

    def choose(self, pool, budget, settings, context):
        from .choose import choose

        return choose(pool, budget, settings, context)

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if _iterative(self, run) and split == "train" and dataset is not None:
            from .rounds import prepare

            return prepare(self, run, dataset)
        return select_train_split(self, run, dataset, split)

    @hookimpl
    def callbacks(self, run):
        if not _iterative(self, run):
            return None
        from .rounds import RoundsCallback

        return [RoundsCallback(self, run)]

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        if _iterative(self, run):
            from .rounds import begin

            begin(self, run, trainer, resume_from_checkpoint)  # a resumed run reads its rounds back

    @hookimpl
    def save_checkpoint(self, run, trainer, checkpoint):
        if _iterative(self, run) and trainer.args.should_save and run.state.get(self.name) is not None:
            from .rounds import save_rounds

            save_rounds(run.state[self.name], checkpoint)


def _iterative(plugin, run) -> bool:
    return run.options_for(plugin).select_kmeans_rounds > 1


plugin = SelectKmeansPlugin()
