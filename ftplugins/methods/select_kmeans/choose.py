"""kMQ (Diversify and Conquer, §3): cluster the pool's embeddings with k-means, give every cluster a share of
the budget proportional to its size, and draw each share without replacement with probability
~ softmax(quality / temperature) inside the cluster.

The reference (for-ai/iterative-data-selection, kmeansiter.py) takes ``min(budget / K, |cluster|)`` per cluster;
we follow the issue's proportional shares (largest-remainder rounding, so the counts sum to the budget exactly).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftplugins.data.embed import embed_pool
from ftplugins.data.kmeans import auto_clusters, kmeans
from ftplugins.data.pipeline import Choice, cache_root
from ftplugins.data.sampling import proportional_quotas, weighted_sample
from ftplugins.errors import FtpluginsError

from .quality import quality_scores, resolve_quality


def choose(pool: Any, budget: int, settings: Any, context: Any) -> Choice:
    if settings.rounds > 1:
        raise FtpluginsError(
            f"select_kmeans_rounds {settings.rounds}: iterative kMQ trains between rounds, which a selection alone "
            "cannot; use the plugin (--plugins select_kmeans --select_kmeans_rounds R) or, in Python, "
            "ftplugins.methods.select_kmeans.select_iteratively with your own training step."
        )
    embeddings = embed_pool(pool, settings, context)
    clusters = min(settings.clusters or auto_clusters(len(pool)), len(pool))
    _, assignment = kmeans(embeddings.vectors, clusters, seed=settings.seed, iterations=settings.iterations,
                           restarts=settings.restarts, device=settings.device)
    sizes = np.bincount(assignment, minlength=clusters)
    quotas = proportional_quotas(sizes, budget)
    quality = resolve_quality(settings.quality, context)
    scores = quality_scores(quality, pool, settings, context, cache_root(settings))
    rng = np.random.default_rng(settings.seed)
    chosen = []
    for cluster in range(clusters):
        members = np.flatnonzero(assignment == cluster)
        chosen.append(members[weighted_sample(scores[members], int(quotas[cluster]), rng, settings.temperature)])
    report = {
        "clusters": clusters,
        "quality": quality,
        "embedding_cache_key": embeddings.key,
        "embedding_cache": embeddings.folder,
        "per_cluster": {int(k): {"size": int(sizes[k]), "chosen": int(quotas[k])} for k in range(clusters)},
    }
    return Choice(np.concatenate(chosen), report, scores if quality != "none" else None, f"quality ({quality})")
