"""Turning scores into a selection: proportional per-cluster quotas (kMQ), weighted draws without
replacement, coverage-enhanced stratified sampling (DEALRec / CCS), most-negative-first (GOT-D).

All draws take a ``numpy.random.Generator`` so one seed gives one selection.
"""

from __future__ import annotations

import numpy as np


def proportional_quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Per-cluster counts that sum to ``budget`` and follow the sizes: ``|q_k - budget * n_k / N| < 1``.

    Largest-remainder rounding (ties: lower cluster id); never more than a cluster holds, since
    ``budget <= N`` bounds every exact share by its cluster's size.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    exact = budget * sizes / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    short = budget - int(quotas.sum())
    if short:
        order = np.lexsort((np.arange(len(sizes)), -(exact - quotas)))
        quotas[order[:short]] += 1
    return np.minimum(quotas, sizes)


def weighted_sample(scores: np.ndarray, count: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
    """``count`` positions drawn without replacement with probability ~ softmax(scores / temperature).

    Gumbel-top-k: adding Gumbel noise to the logits and keeping the top ``count`` is exactly sequential
    sampling without replacement from the softmax. Uniform when every score is equal.
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    logits = np.asarray(scores, dtype=np.float64) / max(temperature, 1e-12)
    keys = logits + rng.gumbel(size=logits.shape[0])
    return np.argsort(-keys, kind="stable")[:count]


def coverage_sample(scores: np.ndarray, budget: int, strata: int, hard_prune: float, rng: np.random.Generator
                    ) -> tuple[np.ndarray, dict]:
    """DEALRec's coverage-enhanced selection: drop the top ``hard_prune`` fraction of scores, split the score
    range into ``strata`` equal-width bins, then repeatedly take the smallest non-empty bin and draw
    ``min(|bin|, budget_left // bins_left)`` of its rows uniformly.

    Returns ``(indices, report)`` with per-stratum sizes and counts. ``strata=1, hard_prune=0`` is uniform sampling.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    pruned = order[: int(np.floor(hard_prune * len(scores)))]
    keep = np.setdiff1d(np.arange(len(scores)), pruned)
    if budget > len(keep):
        raise ValueError(
            f"budget {budget} exceeds the {len(keep)} rows left after hard-pruning the top {hard_prune:.0%}; "
            "lower the budget or the hard_prune fraction"
        )
    low, high = scores[keep].min(), scores[keep].max()
    edges = np.linspace(low, high, strata + 1)
    bins = np.clip(np.searchsorted(edges, scores[keep], side="right") - 1, 0, strata - 1)
    members = {s: keep[bins == s] for s in range(strata) if np.any(bins == s)}
    sizes = {s: len(v) for s, v in members.items()}
    chosen, counts, left = [], {}, budget
    while members:
        stratum = min(members, key=lambda s: (len(members[s]), s))
        rows = members.pop(stratum)
        take = min(len(rows), left // (len(members) + 1))
        picked = rng.choice(rows, size=take, replace=False) if take else np.empty(0, dtype=np.int64)
        chosen.append(picked)
        counts[int(stratum)] = int(take)
        left -= take
    report = {"strata": strata, "hard_pruned": int(len(pruned)), "edges": edges.tolist(),
              "stratum_sizes": {int(s): int(n) for s, n in sorted(sizes.items())},
              "per_stratum": dict(sorted(counts.items()))}
    return np.sort(np.concatenate(chosen).astype(np.int64)), report


def most_negative(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` positions with the smallest values (ties: lower position first)."""
    return np.argsort(np.asarray(values), kind="stable")[:count]
