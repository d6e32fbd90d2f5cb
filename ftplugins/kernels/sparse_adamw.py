"""Dispatcher for the fused masked AdamW step (Triton on CUDA, torch reference elsewhere)."""

from __future__ import annotations

import torch

from .dispatch import use_triton
from .sparse_adamw_reference import sparse_adamw_reference

#: Weight dtypes the Triton kernel handles (moments and master values are always fp32 there).
TRITON_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def sparse_adamw_(
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
    """One AdamW step on the selected entries of ``param``; see :func:`sparse_adamw_reference`."""
    tensors = [t for t in (param, grad, exp_avg, exp_avg_sq, indices, master) if t is not None]
    if (
        grad.numel() > 0
        and use_triton(*tensors)
        and param.dtype in TRITON_PARAM_DTYPES
        and all(t.dtype == torch.float32 for t in (grad, exp_avg, exp_avg_sq))
    ):
        try:
            from ftplugins_kernels.sparse_adamw_triton import sparse_adamw_triton
        except ImportError:  # the Triton kernel is optional
            pass
        else:
            sparse_adamw_triton(param, grad, exp_avg, exp_avg_sq, indices, master, lr=lr, beta1=beta1, beta2=beta2,
                                eps=eps, weight_decay=weight_decay, step=step, grad_scale=grad_scale)
            return
    sparse_adamw_reference(param, grad, exp_avg, exp_avg_sq, indices, master, lr=lr, beta1=beta1, beta2=beta2,
                           eps=eps, weight_decay=weight_decay, step=step, grad_scale=grad_scale)
