"""One selection, whatever the usage form: the plugin's ``transform_dataset``, ``ftplugins select`` and
``ftplugins.data.select`` all call :func:`run_selection`.

A method is a function ``choose(pool, budget, settings, context) -> Choice``; the pipeline loads the pool,
turns the budget into a row count, calls the method and returns the chosen rows (in pool order, through
``Dataset.select``: the source is never modified) with a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from .cache import default_root
from .options import budget_rows, plain
from .source import load_pool, resolve_text_field


@dataclass
class Context:
    """What a selection may use besides the pool: models, a target set, where to cache, a progress bar."""

    model: Any = None
    tokenizer: Any = None
    target: Any = None
    surrogate: Any = None
    show_progress: bool = True


@dataclass
class Choice:
    """A method's answer: pool positions, what to report, and the scores to plot (if any)."""

    indices: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None
    score_name: str = "score"


@dataclass
class Selection:
    dataset: Any            # the chosen rows, a new Dataset
    indices: list[int]      # their positions in the pool, ascending
    report: dict[str, Any]
    scores: np.ndarray | None = None
    score_name: str = "score"


def cache_root(settings: SimpleNamespace) -> str | None:
    if settings.cache_dir.lower() == "none":
        return None
    return settings.cache_dir or default_root()


def run_selection(plugin: Any, data: Any, options: Any, context: Context | None = None) -> Selection:
    """Select from ``data`` with ``plugin`` (its ``choose`` function and options dataclass instance)."""
    context = context or Context()
    settings = plain(options, plugin.name)
    pool = load_pool(data)
    budget = budget_rows(settings.budget, len(pool), f"{plugin.name}_budget")
    settings.text_field = resolve_text_field(pool, settings.text_field)
    choice = plugin.choose(pool, budget, settings, context)
    indices = np.unique(np.asarray(choice.indices, dtype=np.int64))
    if len(indices) != len(choice.indices):
        raise AssertionError(f"{plugin.name} chose a row twice")  # an internal bug, never the user's
    report = {
        "method": plugin.name,
        "pool_rows": len(pool),
        "budget": budget,
        "selected": int(len(indices)),
        "seed": settings.seed,
        "text_field": settings.text_field,
        "options": vars(settings),
        **choice.report,
    }
    return Selection(pool.select(indices.tolist()), indices.tolist(), report, choice.scores, choice.score_name)
