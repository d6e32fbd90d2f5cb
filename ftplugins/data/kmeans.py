"""k-means with faiss (the ``[data]`` extra), seeded: the same inputs and seed give the same clusters.

Diversify and Conquer clusters with faiss (300 iterations, 5 restarts); we do the same. On a machine
with faiss' GPU build and a CUDA device it runs there (:mod:`.devices`; ``device="cpu"`` keeps it on the CPU).
"""

from __future__ import annotations

import numpy as np

from .extras import require


def auto_clusters(rows: int) -> int:
    """Default K: sqrt of the pool, at most the paper's 1024 and at least 2 (never more than the rows)."""
    return max(1, min(rows, 1024, max(2, int(round(rows ** 0.5)))))


def kmeans(vectors: np.ndarray, clusters: int, seed: int = 0, iterations: int = 300, restarts: int = 5,
           device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(centroids [K, d], assignment [N])`` of ``vectors`` (float32, C-contiguous)."""
    faiss = require("faiss")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not 1 <= clusters <= x.shape[0]:
        raise ValueError(f"clusters={clusters}: expected 1..{x.shape[0]} (the number of rows)")
    from .devices import faiss_on_gpu

    use_gpu = faiss_on_gpu(faiss, device)
    model = faiss.Kmeans(x.shape[1], clusters, niter=iterations, nredo=restarts, seed=seed, verbose=False,
                         gpu=use_gpu, min_points_per_centroid=1)
    model.train(x)
    _, assignment = model.index.search(x, 1)
    return model.centroids.copy(), assignment[:, 0].astype(np.int64)
