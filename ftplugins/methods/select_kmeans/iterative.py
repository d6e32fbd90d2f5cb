"""Iterative kMQ (Diversify and Conquer, §3.2; for-ai/iterative-data-selection, selection/iter.py), from Python.

Cluster once; take the first slice (budget / rounds) spread evenly over the clusters; then each round: the caller
trains on the newest slice (``train_round(rows, round)``, e.g. a few steps of its own trainer, continuing the
same model), every row selected so far is scored by how far the model still is from its gold answer
(``d_i``: the paper's RM(gold) - RM(generated), here by default the response's mean NLL under the model), each
cluster's weight is the softmax over clusters of its mean ``d``, and the next slice is drawn from the *unselected*
rows: cluster ids ~ Categorical(w), capped at what each cluster has left, uniform within a cluster. Clusters the
model has already learned lose weight; the weights are re-estimated every round.

Needs a trainer between rounds, so it is a function, not a plugin option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftplugins.data.embed import embed_pool
from ftplugins.data.kmeans import auto_clusters, kmeans
from ftplugins.data.options import budget_rows, plain
from ftplugins.data.pipeline import Context
from ftplugins.data.source import load_pool, resolve_text_field
from ftplugins.errors import FtpluginsError

from .options import SelectKmeansOptions


@dataclass
class IterativeSelection:
    dataset: Any                       # every selected row, in pool order
    indices: list[int]
    rounds: list[list[int]]            # the slice each round added
    weights: list[list[float]] = field(default_factory=list)  # cluster weights used to draw rounds 2..R
    report: dict[str, Any] = field(default_factory=dict)


def mean_nll(model: Any, tokenizer: Any, rows: list[dict], max_length: int) -> np.ndarray:
    """``d_i`` by default: the mean NLL of each row's response under the model just trained."""
    import torch

    from ftplugins.data.influence import row_losses

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return row_losses(model, tokenizer, rows, max_length).double().cpu().numpy()
    finally:
        model.train(was_training)


def cluster_weights(assignment: np.ndarray, selected: np.ndarray, d: np.ndarray, clusters: int,
                    available: np.ndarray, temperature: float) -> np.ndarray:
    """softmax over clusters (with rows left) of the mean ``d`` of their selected rows; a cluster none of whose
    rows was selected yet gets the mean over all selected rows."""
    means = np.full(clusters, d.mean())
    for k in range(clusters):
        mine = d[assignment[selected] == k]
        if mine.size:
            means[k] = mine.mean()
    logits = np.where(available > 0, means / temperature, -np.inf)
    weights = np.exp(logits - logits[available > 0].max())
    return weights / weights.sum()


def even_counts(available: np.ndarray, size: int) -> np.ndarray:
    """``size`` rows spread as evenly as possible over the clusters, none above what a cluster has
    (water-filling; leftover single rows go to the clusters with the most room)."""
    counts = np.zeros_like(available)
    left = size
    while left > 0:
        room = available - counts
        open_clusters = np.flatnonzero(room > 0)
        share = left // len(open_clusters)
        if share == 0:
            counts[open_clusters[np.argsort(-room[open_clusters], kind="stable")[:left]]] += 1
            break
        give = np.minimum(room[open_clusters], share)
        counts[open_clusters] += give
        left -= int(give.sum())
    return counts


def draw_counts(weights: np.ndarray, available: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per cluster: ``size`` cluster ids ~ Categorical(weights), each cluster capped at what it has left
    (the overflow is drawn again among clusters with room)."""
    counts = np.zeros_like(available)
    left = size
    while left > 0:
        room = available - counts
        w = np.where(room > 0, weights, 0.0)
        if w.sum() <= 0:
            w = (room > 0).astype(float)
        drawn = rng.multinomial(left, w / w.sum())
        take = np.minimum(drawn, room)
        counts += take
        left -= int(take.sum())
    return counts


def select_iteratively(data: Any, budget: float, train_round: Callable[[Any, int], None], *, model: Any,
                       tokenizer: Any, rounds: int = 3, score: Callable | None = None, show_progress: bool = True,
                       **options: Any) -> IterativeSelection:
    """Iterative kMQ over ``rounds`` rounds; ``options`` are select_kmeans' without the prefix (``clusters=``,
    ``seed=``, ``encoder=``, ``temperature=`` for the cluster softmax, ...). ``score(model, tokenizer, rows)``
    replaces the default ``d_i`` (mean response NLL)."""
    if rounds < 1:
        raise FtpluginsError(f"rounds={rounds}: expected an integer >= 1.")
    opts = SelectKmeansOptions(**{f"select_kmeans_{k}": v for k, v in options.items()})
    settings = plain(opts, "select_kmeans")
    pool = load_pool(data)
    total = budget_rows(budget, len(pool))
    settings.text_field = resolve_text_field(pool, settings.text_field)
    context = Context(model=model, tokenizer=tokenizer, show_progress=show_progress)
    vectors = embed_pool(pool, settings, context).vectors
    clusters = min(settings.clusters or auto_clusters(len(pool)), len(pool))
    _, assignment = kmeans(vectors, clusters, seed=settings.seed, iterations=settings.iterations,
                           restarts=settings.restarts)
    rng = np.random.default_rng(settings.seed)
    sizes = np.bincount(assignment, minlength=clusters)
    slices = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
    from ftplugins.data.tokens import batch_rows, model_columns

    view = pool.select_columns(model_columns(list(pool.column_names), settings.text_field))
    score = score or (lambda m, t, rows: mean_nll(m, t, rows, settings.max_length))
    taken = np.zeros(len(pool), dtype=bool)
    per_round: list[list[int]] = []
    weights_log: list[list[float]] = []
    d = np.empty(0)
    for r, size in enumerate(slices):
        available = sizes - np.bincount(assignment[taken], minlength=clusters)
        if r == 0:  # evenly over clusters, capped by their sizes
            counts = even_counts(available, size)
        else:
            selected = np.flatnonzero(taken)
            weights = cluster_weights(assignment, selected, d, clusters, available, settings.temperature)
            weights_log.append(weights.tolist())
            counts = draw_counts(weights, available, size, rng)
        new = []
        for k in np.flatnonzero(counts):
            free = np.flatnonzero((assignment == k) & ~taken)
            new.extend(rng.choice(free, size=int(counts[k]), replace=False).tolist())
        new = sorted(new)
        taken[new] = True
        per_round.append(new)
        train_round(pool.select(new), r)
        if r + 1 < rounds:
            selected = np.flatnonzero(taken)
            d = np.asarray(score(model, tokenizer, batch_rows(view[selected.tolist()])), dtype=np.float64)
    indices = np.flatnonzero(taken).tolist()
    report = {"method": "select_kmeans (iterative)", "pool_rows": len(pool), "budget": total, "rounds": rounds,
              "clusters": clusters, "seed": settings.seed, "slices": slices, "cluster_weights": weights_log}
    return IterativeSelection(pool.select(indices), indices, per_round, weights_log, report)
