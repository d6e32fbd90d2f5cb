"""One process of a sharded embedding pass (run twice by test_data_shards.py with RANK / WORLD_SIZE set)."""

import json
import sys

import numpy as np
import torch

from ftplugins.data.embed import ModelEncoder, embed
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

torch.set_num_threads(1)
cache_dir, out = sys.argv[1], sys.argv[2]


class Counting(ModelEncoder):
    rows = 0

    def encode(self, batch):
        Counting.rows += len(batch["prompt"])
        return super().encode(batch)


encoder = Counting(tiny_llama(), tiny_tokenizer(), ["prompt", "completion"], 48)
vectors = embed(arithmetic_dataset(24, seed=3), encoder, cache_dir, batch_size=4, chunk_rows=8,
                show_progress=False).vectors
np.save(out + ".npy", vectors)
json.dump({"rows_encoded": Counting.rows}, open(out + ".json", "w"))
