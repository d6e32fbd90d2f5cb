"""Iterative kMQ (Diversify and Conquer, §3.2; for-ai/iterative-data-selection, selection/iter.py).

Cluster once; hold a few rows of every cluster out (never selected); take the first slice (budget // rounds rows)
spread evenly over the clusters; then each round: the model trains (the paper: a fresh fine-tune from the base on
every row selected so far; the plugin: the same rows within one run, ``select_kmeans_round_rows``), the held-out
rows are scored by how far the model still is from their gold answer (``d_i``: the paper's
RM(gold) - RM(generated), here by default the response's mean NLL under the model, which a noisy gold answer
raises where a reward model's gap lowers it: pass a reward model as ``round_score``), each cluster's weight is the
softmax over clusters of its mean ``d``, and the next slice is drawn from the *unselected* rows: cluster ids ~
Categorical(w), capped at what each cluster has left, and within a cluster by quality as kMQ draws
(``select_kmeans_quality``: perplexity under the initial model by default when there is one; ``none``: uniform).
Clusters the model has already learned lose weight; the weights are re-estimated every round.

We score held-out rows by default (``holdout``) rather than the paper's rows selected so far: a row trained on a
moment ago measures memorisation, a held-out row of the same cluster what the model learned of that cluster.
``holdout=0`` gives the paper's choice. Slices are equal (``budget // rounds`` rows; the plugin's rounds are epochs
over one fixed-length view), so the union may fall short of the budget by fewer than ``rounds`` rows.

:class:`IterativeDraws` holds the draws, one round at a time; :func:`select_iteratively` drives it from Python
(``train_round`` between rounds) and :mod:`.rounds` from the plugin (a callback between epochs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftplugins.data.sampling import weighted_sample
from ftplugins.errors import FtpluginsError, OptionError


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


def round_scorer(name: str, max_length: int) -> Callable[[Any, Any, list[dict]], Any]:
    """``score(model, tokenizer, rows)`` for ``select_kmeans_round_score``: ``nll`` or a user's ``pkg.mod:func``."""
    if name == "nll":
        return lambda model, tokenizer, rows: mean_nll(model, tokenizer, rows, max_length)
    from ftplugins.data.importing import import_callable

    return import_callable("select_kmeans_round_score", name)


def cluster_weights(assignment: np.ndarray, scored: np.ndarray, d: np.ndarray, clusters: int,
                    available: np.ndarray, temperature: float) -> np.ndarray:
    """softmax over clusters (with rows left) of the mean ``d`` of their scored rows; a cluster none of whose
    rows was scored gets the mean over all scored rows."""
    means = np.full(clusters, d.mean())
    for k in range(clusters):
        mine = d[assignment[scored] == k]
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


class IterativeDraws:
    """The slices of iterative kMQ, one round at a time: :meth:`first`, then :meth:`next` with the scores of
    :meth:`scored_rows`. Seeded: the same assignment, seed and scores give the same slices."""

    def __init__(self, assignment: np.ndarray, clusters: int, total: int, rounds: int, seed: int,
                 temperature: float, holdout: int, quality: np.ndarray | None = None):
        self.assignment, self.clusters, self.rounds, self.temperature = assignment, clusters, rounds, temperature
        self.quality = quality  # per-row draw scores within a cluster (higher: likelier); None: uniform
        self.rng = np.random.default_rng(seed)
        self.sizes = np.bincount(assignment, minlength=clusters)
        self.held_out = self._hold_out(holdout)
        self.unavailable = np.zeros(len(assignment), dtype=bool)
        self.unavailable[self.held_out] = True
        self.slice_size = total // rounds
        candidates = len(assignment) - len(self.held_out)
        if self.slice_size < 1:
            raise OptionError(f"select_kmeans_budget {total} rows over select_kmeans_rounds {rounds}: every round "
                              f"needs at least one row; raise the budget to >= {rounds} rows or lower the rounds.")
        if self.slice_size * rounds > candidates:
            raise OptionError(f"select_kmeans_budget {total} rows: only {candidates} rows can be selected once "
                              f"{len(self.held_out)} are held out for scoring; lower the budget or "
                              "select_kmeans_holdout.")
        self.slices: list[list[int]] = []
        self.weights: list[list[float]] = []

    def _hold_out(self, per_cluster: int) -> np.ndarray:
        held = [self.rng.choice(members, size=min(per_cluster, len(members) // 2), replace=False)
                for members in (np.flatnonzero(self.assignment == k) for k in range(self.clusters))]
        return np.sort(np.concatenate(held)).astype(np.int64) if held else np.empty(0, dtype=np.int64)

    @property
    def selected(self) -> np.ndarray:
        """Every row selected so far, ascending."""
        return np.sort(np.concatenate(self.slices)).astype(np.int64) if self.slices else np.empty(0, np.int64)

    @property
    def done(self) -> bool:
        return len(self.slices) == self.rounds

    def scored_rows(self) -> np.ndarray:
        """The rows whose ``d`` reweights the clusters: the held-out rows, or (``holdout=0``) the selected ones."""
        return self.held_out if len(self.held_out) else self.selected

    def first(self) -> list[int]:
        """Round 1: evenly over the clusters, capped by their sizes."""
        return self._take(even_counts(self._available(), self.slice_size))

    def next(self, d: Any) -> list[int]:
        """The next slice, drawn toward the clusters whose scored rows the model is still far from."""
        scored = self.scored_rows()
        d = np.asarray(d, dtype=np.float64).reshape(-1)
        if d.shape[0] != len(scored):
            raise FtpluginsError(f"select_kmeans_round_score returned {d.shape[0]} scores for {len(scored)} rows; "
                                 "return one float per row.")
        available = self._available()
        weights = cluster_weights(self.assignment, scored, d, self.clusters, available, self.temperature)
        self.weights.append(weights.tolist())
        return self._take(draw_counts(weights, available, self.slice_size, self.rng))

    def _available(self) -> np.ndarray:
        return self.sizes - np.bincount(self.assignment[self.unavailable], minlength=self.clusters)

    def _take(self, counts: np.ndarray) -> list[int]:
        if self.done:
            raise FtpluginsError(f"iterative kMQ: all {self.rounds} rounds are drawn already.")
        new = []
        for k in np.flatnonzero(counts):
            free = np.flatnonzero((self.assignment == k) & ~self.unavailable)
            if self.quality is None:
                new.extend(self.rng.choice(free, size=int(counts[k]), replace=False).tolist())
            else:
                new.extend(free[weighted_sample(self.quality[free], int(counts[k]), self.rng,
                                                self.temperature)].tolist())
        new = sorted(int(i) for i in new)
        self.unavailable[new] = True
        self.slices.append(new)
        return new

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the draws (JSON-able): the slices, weights and the generator's state, with a
        fingerprint of what they were drawn from (cluster assignment, held-out rows, sizes)."""
        return {"fingerprint": self.fingerprint(), "slices": self.slices, "weights": self.weights,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue where ``saved`` stopped; a fingerprint mismatch (another pool or other options) raises ValueError."""
        if saved.get("fingerprint") != self.fingerprint():
            raise ValueError("drawn from another pool, clustering or select_kmeans options")
        self.slices = [list(map(int, s)) for s in saved["slices"]]
        self.weights = [list(map(float, w)) for w in saved["weights"]]
        self.rng.bit_generator.state = saved["rng"]
        self.unavailable[:] = False
        self.unavailable[self.held_out] = True
        self.unavailable[self.selected] = True

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.assignment, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.held_out, dtype=np.int64).tobytes())
        digest.update(repr((self.clusters, self.rounds, self.slice_size, self.temperature)).encode())
        if self.quality is not None:  # rounded: a rescored pool may differ in the last bits
            digest.update(np.round(np.asarray(self.quality, dtype=np.float64), 4).tobytes())
        return digest.hexdigest()

    def report(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "slice_rows": self.slice_size, "clusters": self.clusters,
                "held_out": self.held_out.tolist(), "slices": self.slices, "cluster_weights": self.weights,
                "per_cluster": {int(k): {"size": int(self.sizes[k]),
                                         "chosen": int(np.sum(self.assignment[self.selected] == k))}
                                for k in range(self.clusters)}}


def plan(pool: Any, settings: Any, context: Any) -> tuple[IterativeDraws, dict[str, Any]]:
    """Embed and cluster ``pool`` once (shared cache) and set up the draws; the report's cache fields."""
    from ftplugins.data.embed import embed_pool
    from ftplugins.data.kmeans import auto_clusters, kmeans
    from ftplugins.data.options import budget_rows
    from ftplugins.data.pipeline import cache_root

    from .quality import quality_scores, resolve_quality

    total = budget_rows(settings.budget, len(pool), "select_kmeans_budget")
    embeddings = embed_pool(pool, settings, context)
    clusters = min(settings.clusters or auto_clusters(len(pool)), len(pool))
    _, assignment = kmeans(embeddings.vectors, clusters, seed=settings.seed, iterations=settings.iterations,
                           restarts=settings.restarts, device=settings.device)
    quality = resolve_quality(settings.quality, context)
    scores = None if quality == "none" else quality_scores(quality, pool, settings, context, cache_root(settings))
    draws = IterativeDraws(assignment, clusters, total, settings.rounds, settings.seed, settings.temperature,
                           settings.holdout, scores)
    return draws, {"method": "select_kmeans (iterative)", "pool_rows": len(pool), "budget": total,
                   "seed": settings.seed, "quality": quality, "embedding_cache_key": embeddings.key}


def score_rows(score: Callable, model: Any, tokenizer: Any, pool: Any, settings: Any, rows: np.ndarray) -> Any:
    """``score`` of the pool rows ``rows`` (prompt/completion or the text field, as the other model features)."""
    from ftplugins.data.tokens import batch_rows, model_columns

    view = pool.select_columns(model_columns(list(pool.column_names), settings.text_field))
    return score(model, tokenizer, batch_rows(view[rows.tolist()]))


def select_iteratively(data: Any, budget: float, train_round: Callable[[Any, int], None], *, model: Any,
                       tokenizer: Any, rounds: int = 3, score: Callable | None = None, show_progress: bool = True,
                       **options: Any) -> IterativeSelection:
    """Iterative kMQ over ``rounds`` rounds; ``options`` are select_kmeans' without the prefix (``clusters=``,
    ``seed=``, ``holdout=``, ``encoder=``, ``temperature=`` for the cluster softmax, ...). ``score(model,
    tokenizer, rows)`` replaces ``round_score`` (default: mean response NLL). ``train_round(rows, r)`` gets round
    ``r``'s new slice and trains ``model`` in place; for the paper's protocol it keeps the slices so far and
    fine-tunes ``model`` afresh from the base on all of them."""
    from ftplugins.data.options import plain
    from ftplugins.data.pipeline import Context
    from ftplugins.data.source import load_pool, resolve_text_field

    from .options import SelectKmeansOptions

    if rounds < 1:
        raise FtpluginsError(f"rounds={rounds}: expected an integer >= 1.")
    opts = SelectKmeansOptions(**{f"select_kmeans_{k}": v for k, v in {**options, "rounds": rounds,
                                                                        "budget": budget}.items()})
    settings = plain(opts, "select_kmeans")
    pool = load_pool(data)
    settings.text_field = resolve_text_field(pool, settings.text_field)
    draws, report = plan(pool, settings, Context(model=model, tokenizer=tokenizer, show_progress=show_progress))
    score = score or round_scorer(settings.round_score, settings.max_length)
    new = draws.first()
    for r in range(rounds):
        train_round(pool.select(new), r)
        if r + 1 < rounds:
            new = draws.next(score_rows(score, model, tokenizer, pool, settings, draws.scored_rows()))
    indices = draws.selected.tolist()
    return IterativeSelection(pool.select(indices), indices, draws.slices, draws.weights,
                              {**report, **draws.report()})
