"""Triton kernel: fused masked AdamW over an index list.

One pass per block of selected entries: gather the weight (or its fp32 master) at the indices, apply
decoupled weight decay and the Adam update with the compact moments, scatter the result back. The
torch reference (``sparse_adamw_reference``) needs a gather, ~10 elementwise kernels over ``k`` and
a scatter; this is one kernel reading and writing each selected entry once. Same signature and
semantics as the reference, against which it is tested under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _sparse_adamw_kernel(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    indices_ptr,
    master_ptr,
    n,
    decay,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    inv_sqrt_bias_correction2,
    eps,
    grad_scale,
    HAS_INDICES: tl.constexpr,
    HAS_MASTER: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = offsets < n
    if HAS_INDICES:
        where = tl.load(indices_ptr + offsets, mask=valid, other=0)
    else:
        where = offsets
    if HAS_MASTER:
        w = tl.load(master_ptr + offsets, mask=valid, other=0.0)
    else:
        w = tl.load(param_ptr + where, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=valid, other=0.0) * grad_scale
    m = tl.load(exp_avg_ptr + offsets, mask=valid, other=0.0)
    v = tl.load(exp_avg_sq_ptr + offsets, mask=valid, other=0.0)

    w = w * decay
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = tl.sqrt(v) * inv_sqrt_bias_correction2 + eps
    w = w - step_size * (m / denom)

    tl.store(exp_avg_ptr + offsets, m, mask=valid)
    tl.store(exp_avg_sq_ptr + offsets, v, mask=valid)
    if HAS_MASTER:
        tl.store(master_ptr + offsets, w, mask=valid)
    # Triton's fp downcast rounds to nearest even, as torch does (the CPU interpreter truncates to bf16).
    tl.store(param_ptr + where, w.to(param_ptr.dtype.element_ty), mask=valid)


def sparse_adamw_triton(
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
    """Triton version of :func:`ftplugins.kernels.sparse_adamw_reference.sparse_adamw_reference`."""
    n = grad.numel()
    if n == 0:
        return
    for name, t in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                    ("indices", indices), ("master", master)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"sparse_adamw_triton: {name} must be contiguous")
    bias_correction2 = 1 - beta2**step
    grid = (triton.cdiv(n, BLOCK),)
    _sparse_adamw_kernel[grid](
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        indices if indices is not None else grad,  # placeholder pointer, never read
        master if master is not None else grad,  # placeholder pointer, never read
        n,
        1 - lr * weight_decay,
        1 - beta1,
        beta2,
        1 - beta2,
        lr / (1 - beta1**step),
        1 / math.sqrt(bias_correction2),
        eps,
        grad_scale,
        HAS_INDICES=indices is not None,
        HAS_MASTER=master is not None,
        BLOCK_SIZE=BLOCK,
    )
