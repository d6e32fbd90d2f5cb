"""Two processes share one embedding pass through the cache: each computes its shard, both get the whole array,
equal to one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ftplugins.data.shards import my_chunks

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_shard_child.py")


def test_shards_are_contiguous_and_cover_every_chunk_once():
    for chunks in range(0, 12):
        for world in range(1, 5):
            shards = [list(my_chunks(chunks, rank, world)) for rank in range(world)]
            assert sum(shards, []) == list(range(chunks))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.slow
def test_two_processes_fill_the_cache_a_single_process_would(tmp_path):
    from ftplugins.data.embed import ModelEncoder, embed
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    cache = str(tmp_path / "cache")
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(CHILD)), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, CHILD, cache, str(tmp_path / f"rank{rank}")],
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    # 24 rows in chunks of 8: rank 0 computes chunks 0-1, rank 1 chunk 2; both end with all 24 rows.
    assert [json.load(open(tmp_path / f"rank{r}.json"))["rows_encoded"] for r in range(2)] == [16, 8]
    encoder = ModelEncoder(tiny_llama(), tiny_tokenizer(), ["prompt", "completion"], 48)
    single = embed(arithmetic_dataset(24, seed=3), encoder, None, batch_size=4, chunk_rows=8,
                   show_progress=False).vectors
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), single)
    cached = embed(arithmetic_dataset(24, seed=3), encoder, cache, batch_size=4, chunk_rows=8,
                   show_progress=False).vectors
    assert np.array_equal(cached, single)
