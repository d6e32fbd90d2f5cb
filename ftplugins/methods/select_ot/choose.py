"""GOT-D (Kang et al., 2024, §3): pick the candidates whose addition moves the pool's distribution toward the
target's fastest. Solve entropic OT between the candidates' and the targets' embeddings (chunked Sinkhorn,
:mod:`ftplugins.data.sinkhorn`), take each candidate's dual potential ``f_i``, calibrate it as LAVA does
(``f_i - mean_{j != i} f_j``: the gradient of the OT distance w.r.t. that candidate's mass) and keep the most
negative. The paper's domain-relevance pre-step (resampling from the closest domains) is not done.
"""

from __future__ import annotations

from typing import Any

from ftplugins.data.embed import embed_pool, make_encoder
from ftplugins.data.pipeline import Choice
from ftplugins.data.sampling import most_negative
from ftplugins.data.sinkhorn import calibrated_gradient, sinkhorn
from ftplugins.data.source import load_pool
from ftplugins.errors import DatasetColumnsError, FtpluginsError


def load_target(settings: Any, context: Any, pool: Any) -> Any:
    source = context.target if context.target is not None else (settings.target or None)
    if source is None:
        raise FtpluginsError(
            "select_ot needs a target set (rows like your task): set select_ot_target (--target PATH) or pass target=."
        )
    target = load_pool(source, "target")
    shared = set(target.column_names) & set(pool.column_names)
    if not shared:
        raise DatasetColumnsError(
            f"the target set shares no columns with the pool (target: {', '.join(target.column_names)}; pool: "
            f"{', '.join(pool.column_names)}); give it the pool's text column {settings.text_field!r}."
        )
    return target


def check_target_columns(target: Any, columns: list[str]) -> None:
    missing = [c for c in columns if c not in target.column_names]
    if missing:
        raise DatasetColumnsError(
            f"the target set has no column(s) {', '.join(missing)} (embedded in the pool); it has "
            f"{', '.join(target.column_names)}. Rename its columns or set text_field."
        )


def choose(pool: Any, budget: int, settings: Any, context: Any) -> Choice:
    import torch

    target = load_target(settings, context, pool)
    encoder = make_encoder(settings, context, list(pool.column_names))
    check_target_columns(target, encoder.columns)
    candidates = embed_pool(pool, settings, context, desc="embedding pool", encoder=encoder)
    targets = embed_pool(target, settings, context, desc="embedding target", encoder=encoder)
    from ftplugins.data.devices import compute_device

    device = compute_device(settings.device)
    x = torch.from_numpy(candidates.vectors).to(device)
    y = torch.from_numpy(targets.vectors).to(device)
    result = sinkhorn(x, y, reg=settings.epsilon, max_iter=settings.max_iter, tol=settings.tol, chunk=settings.chunk,
                      keep_bytes=settings.keep_mb << 20)
    gradient = calibrated_gradient(result.f.double()).cpu().numpy()
    report = {
        "target_rows": len(target),
        "epsilon": settings.epsilon,
        "sinkhorn_iterations": result.iterations + 1,
        "marginal_error": result.error,
        "converged": result.error < settings.tol,
        "transport_cost": result.cost,
        "embedding_cache_key": candidates.key,
        "target_cache_key": targets.key,
        "embedding_cache": candidates.folder,
    }
    return Choice(most_negative(gradient, budget), report, gradient, "calibrated OT gradient")
