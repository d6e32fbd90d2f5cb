"""Quality scores that weight kMQ's draws within a cluster (higher = likelier to be drawn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftplugins.data.cache import ChunkedArrayCache, cache_key, chunked_rows
from ftplugins.data.importing import import_callable
from ftplugins.data.source import content_fingerprint, iter_batches
from ftplugins.errors import FtpluginsError


def resolve_quality(name: str, context: Any) -> str:
    if name == "auto":
        return "perplexity" if context.model is not None and context.tokenizer is not None else "none"
    return name


def quality_scores(name: str, pool: Any, settings: Any, context: Any, root: str | None) -> np.ndarray:
    """One score per pool row (zeros for ``none``)."""
    if name == "none":
        return np.zeros(len(pool))
    if name == "perplexity":
        return -_mean_nll(pool, settings, context, root)
    scorer = import_callable("select_kmeans_quality", name)
    parts = []
    for batch in iter_batches(pool, list(pool.column_names), settings.batch_size):
        scores = np.asarray(scorer(batch), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(next(iter(batch.values()))):
            raise FtpluginsError(
                f"select_kmeans_quality={name!r} returned {scores.shape[0]} scores for a batch of "
                f"{len(next(iter(batch.values())))} rows; return one float per row."
            )
        parts.append(scores)
    return np.concatenate(parts)


def _mean_nll(pool: Any, settings: Any, context: Any, root: str | None) -> np.ndarray:
    """Mean response-token NLL of each row under the model (log perplexity), cached in chunks."""
    import torch

    from ftplugins.data.fingerprint import model_fingerprint
    from ftplugins.data.influence import row_losses
    from ftplugins.data.tokens import batch_rows, model_columns

    if context.model is None or context.tokenizer is None:
        raise FtpluginsError(
            "select_kmeans_quality=perplexity scores rows under the model, but none was given; pass --model PATH "
            "(ftplugins select) or model= and tokenizer= (Python), or use quality none."
        )
    model, tokenizer = context.model, context.tokenizer
    columns = model_columns(list(pool.column_names), settings.text_field)
    key = cache_key({"score": "mean_nll", "model": model_fingerprint(model), "columns": columns,
                     "data": content_fingerprint(pool, columns), "max_length": settings.max_length})
    cache = ChunkedArrayCache(root, key, {"score": "mean_nll"}, settings.chunk_rows)

    def compute(start, stop):
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return np.concatenate([
                    row_losses(model, tokenizer, batch_rows(b), settings.max_length).double().cpu().numpy()
                    for b in iter_batches(pool, columns, settings.batch_size, start, stop)
                ]).reshape(-1, 1)
        finally:
            model.train(was_training)

    return chunked_rows(len(pool), settings.chunk_rows, cache, compute)[:, 0]
