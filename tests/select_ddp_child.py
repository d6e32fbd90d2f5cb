"""One rank of the selection two-process (gloo, CPU) check, run by ``accelerate launch`` from test_select_ddp.py:
build trainers with select_kmeans, select_ot and select_influence (single-shot), then select_kmeans in 2 rounds; dump
what this rank selected and trained on."""

import json
import os
import sys

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

import ftplugins
from ftplugins.methods.select_influence import plugin as influence_plugin
from ftplugins.methods.select_kmeans import plugin
from ftplugins.methods.select_ot import plugin as ot_plugin
from ftplugins.plugin import Plugin, hookimpl
from ftplugins.process_end import end_distributed_process
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

SHARED = dict(select_kmeans_clusters=3, select_kmeans_iterations=10, select_kmeans_restarts=1,
              select_kmeans_batch_size=4, select_kmeans_chunk_rows=8, select_kmeans_encoder="model",
              select_kmeans_max_length=48)
# select_ot on the model's embeddings toward OT_TARGET (written by the test); select_influence with small sizes.
OT = dict(select_ot_encoder="model", select_ot_batch_size=4, select_ot_chunk_rows=8, select_ot_max_length=48)
OT_TARGET = "ot_target.jsonl"
INFLUENCE = dict(select_influence_strata=4, select_influence_hard_prune=0.1, select_influence_depth=10,
                 select_influence_damping=0.3, select_influence_hvp_batch_size=4, select_influence_max_length=48,
                 select_influence_batch_size=4, select_influence_chunk_rows=8)


class RecordRows(Plugin):
    name = "record_rows"
    summary = "test helper: the token rows of every training micro-batch on this rank"
    options = None

    def __init__(self):
        self.rows = []

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        if model.training:
            mask = inputs["attention_mask"].bool()
            self.rows.append([ids[m].tolist() for ids, m in zip(inputs["input_ids"], mask)])
        return inner()


def main(out: str) -> None:
    torch.set_num_threads(1)
    pool = Dataset.from_list(arithmetic_dataset(24, seed=3).to_list())

    def args(name, **more):
        return SFTConfig(output_dir=os.path.join(out, name), use_cpu=True, bf16=False, report_to="none",
                         per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True, max_length=48,
                         seed=0, **more)

    single = args("single", max_steps=1)
    assert single.world_size == 2, single.world_size
    rank = single.process_index
    cls = ftplugins.compose(SFTTrainer, [plugin], select_kmeans_budget=8, select_kmeans_quality="perplexity",
                            select_kmeans_cache_dir=os.path.join(out, "cache"), **SHARED)
    trainer = cls(model=tiny_llama(), args=single, train_dataset=pool, processing_class=tiny_tokenizer())
    chosen = {"kmeans": trainer.ftplugins_run.state["select_kmeans"]["indices"]}
    for name, method, options in (("ot", ot_plugin, dict(OT, select_ot_target=os.path.join(out, OT_TARGET))),
                                  ("influence", influence_plugin, INFLUENCE)):
        cls = ftplugins.compose(SFTTrainer, [method], **{f"select_{name}_budget": 8,
                                                         f"select_{name}_cache_dir": os.path.join(out, f"cache-{name}"),
                                                         **options})
        trainer = cls(model=tiny_llama(), args=args(name, max_steps=1), train_dataset=pool,
                      processing_class=tiny_tokenizer())
        chosen[name] = trainer.ftplugins_run.state[f"select_{name}"]["indices"]

    recorder = RecordRows()
    cls = ftplugins.compose(SFTTrainer, [plugin, recorder], select_kmeans_budget=8, select_kmeans_rounds=2,
                            select_kmeans_holdout=1, select_kmeans_quality="none",
                            select_kmeans_cache_dir=os.path.join(out, "cache-rounds"), **SHARED)
    trainer = cls(model=tiny_llama(), args=args("rounds", num_train_epochs=2), train_dataset=pool,
                  processing_class=tiny_tokenizer())
    trainer.train()
    rounds = trainer.ftplugins_run.state["select_kmeans_rounds"]
    view = trainer.train_dataset
    row_of = {tuple(view.rows[i]["input_ids"]): i for i in range(len(view.rows))}
    trained = [row_of[tuple(row)] for batch in recorder.rows for row in batch]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump({"single": chosen, "slices": rounds["report"]["slices"], "trained": trained,
                   "steps": len(recorder.rows)}, handle)
    end_distributed_process()  # no interpreter teardown, where gloo can abort a finished rank


if __name__ == "__main__":
    main(sys.argv[1])
