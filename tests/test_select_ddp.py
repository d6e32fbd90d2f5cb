"""Selection plugins under DDP (two CPU processes, gloo, ``accelerate launch``): every rank keeps the same rows,
those one process would keep, for select_kmeans, select_ot and select_influence (the model-embedding, perplexity and
gradient-feature passes are shared through the cache, each rank computing a shard); with select_kmeans_rounds every
rank shows the same rows each round, and together the ranks train on exactly those rows."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_distributed import accelerate_bin, ddp_flags

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "select_ddp_child.py")


@pytest.mark.slow
def test_two_ranks_select_the_same_rows_as_one_process(tmp_path):
    from select_ddp_child import INFLUENCE, OT, OT_TARGET, SHARED

    from ftplugins.data import select
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    target = arithmetic_dataset(4, seed=9)
    (tmp_path / OT_TARGET).write_text("".join(json.dumps(row) + "\n" for row in target.to_list()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), CHILD, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    def alone(method, options, **more):
        options = {k.removeprefix(f"select_{method}_"): v for k, v in options.items()}
        return select(method, arithmetic_dataset(24, seed=3), 8, model=tiny_llama(), tokenizer=tiny_tokenizer(),
                      cache_dir="none", show_progress=False, **options, **more).indices

    assert ranks[0]["single"]["kmeans"] == ranks[1]["single"]["kmeans"] == alone("kmeans", SHARED,
                                                                                  quality="perplexity")
    assert ranks[0]["single"]["ot"] == ranks[1]["single"]["ot"] == alone("ot", OT, target=target)
    assert ranks[0]["single"]["influence"] == ranks[1]["single"]["influence"] == alone("influence", INFLUENCE)

    slices = ranks[0]["slices"]
    assert ranks[1]["slices"] == slices and len(slices) == 2 and not set(slices[0]) & set(slices[1])
    # Each epoch is one round of the budget's 8 rows (round 1: its 4-row slice twice; round 2: both slices), split
    # over 2 ranks in batches of 2, two steps each; together the ranks cover the round's rows.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4
    for epoch in range(2):
        so_far = sum(slices[: epoch + 1], [])
        rows = sorted(so_far[i % len(so_far)] for i in range(8))
        assert sorted(ranks[0]["trained"][4 * epoch:4 * epoch + 4] + ranks[1]["trained"][4 * epoch:4 * epoch + 4]) \
            == rows, epoch
