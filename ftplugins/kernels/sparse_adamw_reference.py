"""Pure-torch reference of the fused masked AdamW step over an index list.

The one definition of the sparse engine's update: :class:`ftplugins.sparse.SparseAdamW` calls it
through the dispatcher :func:`ftplugins.kernels.sparse_adamw.sparse_adamw_`, and the Triton kernel
is tested against it. The arithmetic is that of ``torch.optim.AdamW`` (single-tensor path, same
operation order), applied to the ``k`` selected entries of a weight only:

    w <- w * (1 - lr * wd)                        decoupled weight decay, selected entries only
    m <- m + (1 - β1) (g - m)                     (lerp, as torch does)
    v <- β2 v + (1 - β2) g²
    w <- w - lr / (1 - β1^t) * m / (sqrt(v) / sqrt(1 - β2^t) + eps)

Where the weight is bf16/fp16 the update runs on the fp32 ``master`` values and the weight receives
their rounded copy; an fp32 weight is its own master.
"""

from __future__ import annotations

import math

import torch


def sparse_adamw_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    indices: torch.Tensor | None = None,
    master: torch.Tensor | None = None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step on the selected entries of ``param``, in place.

    Args:
        param: the weight, flattened (1-D, contiguous; a view of the parameter).
        grad: the compact gradient of the selected entries, ``[k]`` (fp32).
        exp_avg, exp_avg_sq: the compact Adam moments, ``[k]``, updated in place.
        indices: sorted int32/int64 flat indices of the selected entries, ``[k]``; ``None`` = every entry
            (then ``k == param.numel()``).
        master: fp32 master values of the selected entries ``[k]`` for a low-precision ``param``,
            updated in place; ``None`` when ``param`` itself holds full precision.
        step: the step number after this update (1 for the first), for the bias corrections.
        grad_scale: multiplies ``grad`` first (gradient clipping), without modifying it.
    """
    g = grad if grad_scale == 1.0 else grad * grad_scale
    if master is not None:
        w = master
    elif indices is None:
        w = param
    else:
        w = param.index_select(0, indices)  # ~3x faster than param[indices] on CPU (int32 indices)
    w.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    w.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    if w is param:
        return
    if indices is None:
        param.copy_(w)
    else:
        # index_copy_ takes int64 only; widening per step still beats index_put_ with int32 on CPU.
        param.index_copy_(0, indices if indices.dtype == torch.int64 else indices.long(), w.to(param.dtype))
