"""The unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code").

With n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the probability that k samples drawn without
replacement from the n contain at least one that passes. Computed as a product (the paper's numerically stable
form) so that n in the hundreds does not overflow a float.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftplugins.errors import FtpluginsError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with ``n`` samples, ``c`` of them correct."""
    if not (0 <= c <= n and 1 <= k):
        raise FtpluginsError(f"pass_at_k(n={n}, c={c}, k={k}): expected 0 <= c <= n and k >= 1.")
    if k > n:
        raise FtpluginsError(f"pass_at_k: k={k} needs at least k samples per task but n={n}; generate n >= {k} "
                             f"samples (--n {k}) or drop k={k}.")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over tasks given as (n, c) pairs."""
    if not counts:
        raise FtpluginsError("mean_pass_at_k: no tasks to average over.")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
