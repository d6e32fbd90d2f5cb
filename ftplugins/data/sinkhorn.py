"""Entropic optimal transport between two point clouds, in log domain and in chunks.

The squared-Euclidean cost matrix ``C[i, j] = |x_i - y_j|^2`` need never be held whole: every Sinkhorn
half-step streams over ``chunk x chunk`` tiles and folds their log-sum-exps together, so memory is
``O((N + M) d + chunk^2)`` and a million candidates fit in a few GB. Tiles already computed are kept between
iterations while they fit in ``keep_bytes`` (1 GiB by default; 0 for the strict bound), so at sizes POT can
hold no matmul is repeated, and beyond that memory stays capped. Iterations, stopping rule and potentials follow
POT's ``ot.sinkhorn(..., method="sinkhorn_log")`` exactly (``v`` then ``u``; the column marginal error checked
every 10 iterations), so the two agree to rounding on sizes POT can hold. Runs on CUDA when the tensors are there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SinkhornResult:
    log_u: torch.Tensor  # [N] POT's ``log_u``
    log_v: torch.Tensor  # [M]
    reg: float
    cost: float          # <P, C>
    iterations: int
    error: float         # column-marginal violation at the last check

    @property
    def f(self) -> torch.Tensor:
        """Dual potential of the first (candidate) measure: ``reg * log_u``."""
        return self.reg * self.log_u

    @property
    def g(self) -> torch.Tensor:
        return self.reg * self.log_v


def _cost_tile(x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)).clamp_(min=0.0)


def squared_norms(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``|x_i|^2`` per row, ``chunk`` rows at a time: ``(x * x).sum(1)`` would hold a copy of all of ``x``."""
    return torch.cat([(part * part).sum(1) for part in x.split(chunk)]) if x.shape[0] else x.new_zeros(0)


class CostTiles:
    """``C[i:i+chunk, j:j+chunk]`` on demand. Tiles are kept once computed while they fit in ``keep_bytes``
    (at sizes POT can hold they all do, and no iteration recomputes a matmul); beyond it they are recomputed."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, chunk: int, keep_bytes: int):
        self.x, self.y, self.chunk = x, y, chunk
        self.x_sq, self.y_sq = squared_norms(x, chunk), squared_norms(y, chunk)
        self.left, self.kept = keep_bytes, {}

    def __call__(self, i: int, j: int) -> torch.Tensor:
        tile = self.kept.get((i, j))
        if tile is None:
            c = self.chunk
            tile = _cost_tile(self.x[i:i + c], self.y[j:j + c], self.x_sq[i:i + c], self.y_sq[j:j + c])
            size = tile.numel() * tile.element_size()
            if size <= self.left:
                self.kept[(i, j)], self.left = tile, self.left - size
        return tile


def _lse_over_columns(tiles: CostTiles, col_term: torch.Tensor, reg: float) -> torch.Tensor:
    """``out[i] = logsumexp_j(col_term[j] - C[i, j] / reg)``, tile by tile."""
    x, y, chunk = tiles.x, tiles.y, tiles.chunk
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk):
        acc = torch.full((min(chunk, x.shape[0] - i),), -math.inf, dtype=x.dtype, device=x.device)
        for j in range(0, y.shape[0], chunk):
            acc = torch.logaddexp(acc, torch.logsumexp(col_term[None, j:j + chunk] - tiles(i, j) / reg, dim=1))
        out[i:i + chunk] = acc
    return out


def _lse_over_rows(tiles: CostTiles, row_term: torch.Tensor, reg: float) -> torch.Tensor:
    """``out[j] = logsumexp_i(row_term[i] - C[i, j] / reg)``, tile by tile."""
    x, y, chunk = tiles.x, tiles.y, tiles.chunk
    out = torch.empty(y.shape[0], dtype=x.dtype, device=x.device)
    for j in range(0, y.shape[0], chunk):
        acc = torch.full((min(chunk, y.shape[0] - j),), -math.inf, dtype=x.dtype, device=x.device)
        for i in range(0, x.shape[0], chunk):
            acc = torch.logaddexp(acc, torch.logsumexp(row_term[i:i + chunk, None] - tiles(i, j) / reg, dim=0))
        out[j:j + chunk] = acc
    return out


def _transport_cost(tiles: CostTiles, log_u, log_v, reg) -> float:
    x, y, chunk = tiles.x, tiles.y, tiles.chunk
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk):
        for j in range(0, y.shape[0], chunk):
            tile = tiles(i, j)
            total += (torch.exp(log_u[i:i + chunk, None] - tile / reg + log_v[None, j:j + chunk]) * tile).sum()
    return float(total)


def sinkhorn(x: torch.Tensor, y: torch.Tensor, reg: float = 0.1, max_iter: int = 1000, tol: float = 1e-9,
             chunk: int = 4096, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             keep_bytes: int = 1 << 30) -> SinkhornResult:
    """Entropic OT between the rows of ``x`` [N, d] and ``y`` [M, d] (uniform weights unless ``a``/``b``).

    ``keep_bytes`` caps the cost tiles kept between iterations (default 1 GiB; 0: recompute every tile, the strict
    ``O((N + M) d + chunk^2)`` memory).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x [N, d] and y [M, d] of one dimension; got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    dtype, device = x.dtype, x.device
    a = torch.full((n,), 1.0 / n, dtype=dtype, device=device) if a is None else a.to(dtype)
    b = torch.full((m,), 1.0 / m, dtype=dtype, device=device) if b is None else b.to(dtype)
    log_a, log_b = a.log(), b.log()
    tiles = CostTiles(x, y, chunk, keep_bytes)
    log_u = torch.zeros(n, dtype=dtype, device=device)
    log_v = torch.zeros(m, dtype=dtype, device=device)
    error, it = math.inf, 0
    for it in range(max_iter):
        log_v = log_b - _lse_over_rows(tiles, log_u, reg)
        log_u = log_a - _lse_over_columns(tiles, log_v, reg)
        if it % 10 == 0:
            column_mass = torch.exp(_lse_over_rows(tiles, log_u, reg) + log_v)
            error = float(torch.linalg.vector_norm(column_mass - b))
            if error < tol:
                break
    cost = _transport_cost(tiles, log_u, log_v, reg)
    return SinkhornResult(log_u=log_u, log_v=log_v, reg=reg, cost=cost, iterations=it, error=error)


def calibrated_gradient(f: torch.Tensor) -> torch.Tensor:
    """LAVA's calibrated gradient of each candidate: ``f_i - mean_{j != i} f_j`` (sums to 0, blind to f + c)."""
    n = f.shape[0]
    if n == 1:
        return torch.zeros_like(f)
    return f - (f.sum() - f) / (n - 1)
