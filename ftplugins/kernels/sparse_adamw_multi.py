"""One masked AdamW step over many tensors at once (the sparse engine's whole optimizer step).

:class:`SparseAdamWTensor` is one tensor's share of the step: the arguments of
:func:`ftplugins.kernels.sparse_adamw_reference.sparse_adamw_reference` for it, hyper-parameters included
(tensors of different parameter groups may differ in ``lr``, ``weight_decay`` or their step count).
:func:`sparse_adamw_multi_` gives the whole list to one multi-tensor Triton launch on CUDA (per weight dtype
and index dtype: one launch for a model of one dtype), instead of one launch per tensor that made the step
launch-bound; on the CPU, without Triton or with ``FTPLUGINS_KERNELS=off``, it calls the reference per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dispatch import use_triton
from .sparse_adamw import TRITON_PARAM_DTYPES
from .sparse_adamw_reference import sparse_adamw_reference


@dataclass
class SparseAdamWTensor:
    """One tensor's update: see :func:`sparse_adamw_reference` for what each field holds."""

    param: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    indices: torch.Tensor | None
    master: torch.Tensor | None
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.param, self.grad, self.exp_avg, self.exp_avg_sq, self.indices, self.master)
                if t is not None]

    def hyper(self) -> dict:
        return dict(lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay,
                    step=self.step)


def triton_takes(update: SparseAdamWTensor) -> bool:
    """The dtypes the multi-tensor kernel handles: fp32 state, an fp32/bf16/fp16 weight, int32/int64 indices."""
    return (update.param.dtype in TRITON_PARAM_DTYPES
            and all(t.dtype == torch.float32 for t in (update.grad, update.exp_avg, update.exp_avg_sq))
            and (update.master is None or update.master.dtype == torch.float32)
            and (update.indices is None or update.indices.dtype in (torch.int32, torch.int64)))


def sparse_adamw_multi_(updates: list[SparseAdamWTensor], *, grad_scale: float = 1.0) -> None:
    """AdamW on the selected entries of every tensor of ``updates``, in place; equal to calling
    :func:`sparse_adamw_reference` on each."""
    updates = [u for u in updates if u.grad.numel() > 0]
    if not updates:
        return
    # The weights decide the device (the kernel refuses state kept elsewhere by name): this runs every step.
    if use_triton(*(u.param for u in updates)) and all(triton_takes(u) for u in updates):
        try:
            from ftplugins_kernels.sparse_adamw_multi_triton import sparse_adamw_multi_triton
        except ImportError:  # the Triton kernel is optional
            pass
        else:
            sparse_adamw_multi_triton(updates, grad_scale=grad_scale)
            return
    for u in updates:
        sparse_adamw_reference(u.param, u.grad, u.exp_avg, u.exp_avg_sq, u.indices, u.master, **u.hyper(),
                               grad_scale=grad_scale)
