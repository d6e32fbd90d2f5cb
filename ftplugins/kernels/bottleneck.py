"""Dispatcher for the fused bottleneck adapter (Triton on CUDA, torch reference elsewhere).

The Triton kernel takes the calls it supports (see :func:`bottleneck_triton.supports`: bottleneck
width up to 256, a scalar or per-output scale, fp32/fp16/bf16); any other call, CPU tensors without
``TRITON_INTERPRET=1``, a missing Triton and ``FTPLUGINS_KERNELS=off`` use the reference.

Not on by default on CUDA: on an H200 the fused kernel measured 2-30x slower than the reference's cuBLAS
products (its weight-gradient kernels reduce over every row in one program per column tile, too few programs
for a large GPU; BENCHMARKS.md, "Kernels on a GPU"). ``FTPLUGINS_KERNELS=all`` still selects it.
"""

from __future__ import annotations

import torch

from .bottleneck_reference import bottleneck_adapter_reference
from .dispatch import use_triton


def bottleneck_adapter(
    x: torch.Tensor,
    down_weight: torch.Tensor,
    up_weight: torch.Tensor,
    scale: torch.Tensor | float,
    activation: str,
    residual: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
    up_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + scale * up(act(down(x)))``; see :func:`bottleneck_adapter_reference`."""
    args = (x, down_weight, up_weight, scale, activation, residual, down_bias, up_bias)
    if use_triton(x, down_weight, up_weight, faster_on_gpu=False):
        try:
            from .bottleneck_triton import bottleneck_adapter_triton, supports
        except ImportError:  # the Triton kernel is optional
            pass
        else:
            if supports(*args):
                return bottleneck_adapter_triton(*args)
    return bottleneck_adapter_reference(*args)
