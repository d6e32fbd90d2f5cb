"""The bottleneck adapter in torch: ``residual + scale * up(act(down(x)))``.

The one definition of the bottleneck computation, called by the ``bottleneck`` tuner. Computed in fp32
and cast back to ``x.dtype``, as LLM-Adapters does, so bf16 bases keep a precise adapter path.

There is no Triton kernel for it: a fused one measured 2-30x slower than these cuBLAS products on an
H200 (BENCHMARKS.md, "Kernels on a GPU") and was removed rather than shipped off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "identity": lambda t: t,
}


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
    """``residual + scale * (act(x @ down_weight.T + down_bias) @ up_weight.T + up_bias)``.

    Shapes: x [..., d_in], down_weight [b, d_in], up_weight [d_out, b], residual [..., d_out].
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    dtype = x.dtype
    h = F.linear(x.float(), down_weight.float(), None if down_bias is None else down_bias.float())
    h = ACTIVATIONS[activation](h)
    out = F.linear(h, up_weight.float(), None if up_bias is None else up_bias.float())
    out = out * (scale.float() if isinstance(scale, torch.Tensor) else scale)
    if residual is not None:
        out = out + residual.float()
    return out.to(dtype)
