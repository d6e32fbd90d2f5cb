"""Four processes (gloo, CPU) in one launch (tests/test_ddp4.py): one plugin per family, one after the other in the
same process group: ssf (adapters), lift (sparse), deep_align (objective), select_kmeans (data selection). The data
has 18 rows, not a multiple of 4, so any shard a plugin computes itself is uneven.

``run_case`` is shared with the test, which calls it in-process with the whole global batch on one process. Each
rank writes its trainable weights (rank<r>.pt) and, for select_kmeans, the rows it kept (rows<r>.json)."""

import json
import os
import sys

from ddp_child_common import run_cases_and_exit, save_rank_weights

GLOBAL_BATCH, STEPS, ROWS = 4, 2, 18
CASES = {
    "ssf": dict(),
    "lift": dict(lift_rank=4, lift_budget_rank=2, lift_interval=2),
    "deep_align": dict(),
    "select_kmeans": dict(select_kmeans_budget=6, select_kmeans_clusters=3, select_kmeans_iterations=10,
                          select_kmeans_restarts=1, select_kmeans_batch_size=4, select_kmeans_chunk_rows=5,
                          select_kmeans_encoder="model", select_kmeans_max_length=48, select_kmeans_quality="none"),
}


def run_case(name: str, root: str, world_size: int):
    """Train case ``name`` into root/name with the global batch split over ``world_size`` processes."""
    import ftplugins
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer
    from trl import SFTConfig, SFTTrainer

    out = os.path.join(root, name)
    options = dict(CASES[name])
    if name == "select_kmeans":
        options["select_kmeans_cache_dir"] = os.path.join(root, "kmeans-cache")
    args = SFTConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", max_steps=STEPS,
                     per_device_train_batch_size=GLOBAL_BATCH // world_size, learning_rate=5e-2, logging_steps=1,
                     dataloader_drop_last=True, seed=0, max_length=64, disable_tqdm=True, save_strategy="no")
    assert args.world_size == world_size, (args.world_size, world_size)
    cls = ftplugins.compose(SFTTrainer, [name], **options)
    trainer = cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(ROWS),
                  processing_class=tiny_tokenizer())
    trainer.train()
    rank = save_rank_weights(trainer, out)
    if name == "select_kmeans":
        with open(os.path.join(out, f"rows{rank}.json"), "w") as handle:
            json.dump(trainer.ftplugins_run.state["select_kmeans"]["indices"], handle)
    return trainer


def main(root: str, names: list[str]) -> None:
    run_cases_and_exit(run_case, root, names, 4)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
