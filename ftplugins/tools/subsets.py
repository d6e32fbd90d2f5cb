"""Nested training subsets for sample-efficiency sweeps: every smaller subset is inside every larger one.

Nesting is what makes a score-vs-data curve a curve about data rather than about which rows were drawn: the
points differ only by the rows added. One seeded permutation of the pool (or of each class, for k-shot) is drawn
once; a fraction ``f`` takes its first ``ceil(f · N)`` rows, ``k`` shots take the first ``k`` rows of each class.
The same seed and pool give the same subsets in every process and every resumed run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError


def parse_fractions(text: str | Sequence[Any]) -> list[float]:
    """``"0.01,0.05,1"`` -> [0.01, 0.05, 1.0], each in (0, 1], sorted, distinct."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = sorted({float(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        values = []
    if not values or values[0] <= 0 or values[-1] > 1:
        raise FtpluginsError(f"--train-fraction {text!r}: expected fractions in (0, 1] separated by commas, e.g. "
                             "0.01,0.05,0.25,1")
    return values


def parse_shots(text: str | Sequence[Any]) -> list[int]:
    """``"1,3,8"`` -> [1, 3, 8], positive, sorted, distinct."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise FtpluginsError(f"--k-shot {text!r}: expected positive whole numbers of examples per class separated "
                             "by commas, e.g. 1,3,8")
    return values


def fraction_subsets(n: int, fractions: Sequence[float], seed: int = 0) -> dict[float, list[int]]:
    """Row indices of each fraction of a pool of ``n`` rows; nested, at least one row each."""
    if n < 1:
        raise FtpluginsError("the training pool is empty; a sweep needs rows to take fractions of")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return {f: sorted(order[:max(1, math.ceil(f * n))]) for f in fractions}


def kshot_subsets(labels: Sequence[Any], shots: Sequence[int], seed: int = 0) -> dict[int, list[int]]:
    """Row indices of ``k`` examples of every class for each ``k``; nested. A class with fewer than ``max(shots)``
    rows is refused (its curve would silently flatten)."""
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(str(label), []).append(index)
    if len(by_class) < 2:
        raise FtpluginsError(f"--k-shot needs at least two classes in the label column; found {sorted(by_class)}")
    rng = random.Random(seed)
    for name in sorted(by_class):  # sorted: the draw does not depend on the order classes first appear in
        rng.shuffle(by_class[name])
    short = {name: len(rows) for name, rows in by_class.items() if len(rows) < max(shots)}
    if short:
        raise FtpluginsError(f"--k-shot {max(shots)}: the classes {short} have fewer rows than that; lower k or add "
                             "examples")
    return {k: sorted(i for name in sorted(by_class) for i in by_class[name][:k]) for k in shots}
