"""DEALRec (Lin et al., SIGIR 2024, §3): score every row by its influence on the empirical risk, estimated on a
small surrogate (``(H^-1 v)^T grad l(s)``, LiSSA, :mod:`ftplugins.data.influence`), plus the "effort" the model
being fine-tuned needs for it (``|grad l(s)|``), ``S = minmax(I) + lambda * minmax(E)``; then coverage-enhanced
sampling across score strata so the selection spans easy and hard rows instead of collapsing onto one region.

Memory does not grow with the pool: ``v`` is accumulated batch by batch, ``H^-1 v`` is a few parameter vectors,
and each row's score is a dot product taken as its gradient is computed. Per-row scores are cached in chunks.
Ours: the surrogate is used as given (DEALRec trains it on the pool first; pass one you trained).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftplugins.data.cache import ChunkedArrayCache, cache_key, chunked_rows
from ftplugins.data.fingerprint import model_fingerprint
from ftplugins.data.influence import (
    flat,
    grads_only_for,
    hvp,
    lissa,
    mean_gradient,
    per_row_scores,
    row_losses,
    select_parameters,
)
from ftplugins.data.pipeline import Choice, cache_root
from ftplugins.data.sampling import coverage_sample
from ftplugins.data.source import content_fingerprint
from ftplugins.data.tokens import batch_rows, model_columns
from ftplugins.errors import FtpluginsError


def load_surrogate(settings: Any, context: Any) -> tuple[Any, Any]:
    if context.surrogate is not None:
        return context.surrogate, context.tokenizer
    if settings.surrogate:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return (AutoModelForCausalLM.from_pretrained(settings.surrogate),
                AutoTokenizer.from_pretrained(settings.surrogate))
    return context.model, context.tokenizer


def minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


class RowLoss:
    """Per-row losses of the pool under one model (a closure over the pool's token columns)."""

    def __init__(self, model: Any, tokenizer: Any, pool: Any, columns: list[str], max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.view = pool.select_columns(columns)

    def __call__(self, indices: list[int]):
        return row_losses(self.model, self.tokenizer, batch_rows(self.view[indices]), self.max_length)


def inverse_hvp(loss_of: RowLoss, params: list[Any], rows: int, settings: Any):
    """``(H + damping * scale * I)^-1 v`` for the mean training gradient ``v``, by LiSSA on sampled batches."""
    rng = np.random.default_rng(settings.seed)
    v = mean_gradient(loss_of, params, rows, settings.batch_size).detach()

    def hvp_at(vector, step):
        batch = rng.choice(rows, size=min(settings.hvp_batch_size, rows), replace=False)
        return hvp(loss_of(batch.tolist()).mean(), params, vector)

    return lissa(hvp_at, v, settings.depth, settings.damping, settings.scale)


def influence_scores(model, tokenizer, pool, columns, settings, root) -> np.ndarray:
    import torch

    params = [p for _, p in select_parameters(model, settings.params)]
    key = cache_key({"score": "influence", "model": model_fingerprint(model), "columns": columns,
                     "data": content_fingerprint(pool, columns), "params": settings.params, "seed": settings.seed,
                     "lissa": [settings.depth, settings.damping, settings.scale, settings.hvp_batch_size],
                     "max_length": settings.max_length, "batch_size": settings.batch_size})
    cache = ChunkedArrayCache(root, key, {"score": "influence"}, settings.chunk_rows)
    loss_of = RowLoss(model, tokenizer, pool, columns, settings.max_length)
    state: dict[str, Any] = {}

    def compute(start, stop):
        with grads_only_for(model, params):
            if "h" not in state:  # only when some chunk is missing
                state["h"] = inverse_hvp(loss_of, params, len(pool), settings)
            h = state["h"]
            return per_row_scores(lambda i: float(h @ flat(torch.autograd.grad(loss_of(i).sum(), params))),
                                  start, stop)

    return chunked_rows(len(pool), settings.chunk_rows, cache, compute)[:, 0]


def effort_scores(model, tokenizer, pool, columns, settings, root) -> np.ndarray:
    import torch

    params = [p for _, p in select_parameters(model, settings.params)]
    key = cache_key({"score": "effort", "model": model_fingerprint(model), "columns": columns,
                     "data": content_fingerprint(pool, columns), "params": settings.params,
                     "max_length": settings.max_length})
    cache = ChunkedArrayCache(root, key, {"score": "effort"}, settings.chunk_rows)
    loss_of = RowLoss(model, tokenizer, pool, columns, settings.max_length)

    def compute(start, stop):
        with grads_only_for(model, params):
            return per_row_scores(
                lambda i: float(flat(torch.autograd.grad(loss_of(i).sum(), params)).norm()), start, stop)

    return chunked_rows(len(pool), settings.chunk_rows, cache, compute)[:, 0]


def choose(pool: Any, budget: int, settings: Any, context: Any) -> Choice:
    if context.model is None or context.tokenizer is None:
        raise FtpluginsError(
            "select_influence scores rows with the model being fine-tuned (effort) and a surrogate (influence); "
            "pass --model PATH (ftplugins select) or model= and tokenizer= (Python)."
        )
    surrogate, surrogate_tokenizer = load_surrogate(settings, context)
    columns = model_columns(list(pool.column_names), settings.text_field)
    root = cache_root(settings)
    influence = influence_scores(surrogate, surrogate_tokenizer, pool, columns, settings, root)
    effort = effort_scores(context.model, context.tokenizer, pool, columns, settings, root)
    score = minmax(influence) + settings.effort_weight * minmax(effort)
    rng = np.random.default_rng(settings.seed)
    try:
        indices, strata = coverage_sample(score, budget, settings.strata, settings.hard_prune, rng)
    except ValueError as exc:
        raise FtpluginsError(f"select_influence: {exc}.") from None
    report = {"effort_weight": settings.effort_weight, "columns": columns,
              "influence": _summary(influence), "effort": _summary(effort), **strata}
    return Choice(indices, report, score, "influence + effort score")


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}
