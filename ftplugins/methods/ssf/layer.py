"""``SSFLayer``: a base module whose output is scaled and shifted per channel, y -> γ⊙y + β.

SSF (Lian et al. 2022, §3.2) puts the scale-shift after every operation that ends in a linear map:
Linear, Conv2d, LayerNorm / RMSNorm. The channel is the last dimension except for Conv2d (dim 1).

Merging (paper §3.3) folds γ, β into the module it follows, so the merged model has exactly the
base architecture: Linear W'=diag(γ)W, b'=γ⊙b+β; LayerNorm w'=γ⊙w, b'=γ⊙b+β; RMSNorm w'=γ⊙w;
Conv2d scales each output filter and its bias.

Design decision: a module without a bias (Llama's projections, RMSNorm) gets the scale γ only,
because a shift there can only be merged by adding a bias, which changes the architecture. With
``shift_without_bias=True`` such modules get β too; the adapter then works unmerged but refuses to
merge, naming the modules.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ftplugins.tuners import FtTunerLayer

SUPPORTED = "Linear, Conv2d, LayerNorm and RMSNorm modules"


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and their look-alikes from transformers (matched by class name), with a weight."""
    named = type(module).__name__.endswith(("LayerNorm", "RMSNorm"))
    return named and isinstance(getattr(module, "weight", None), torch.Tensor)


def channel_dim(module: nn.Module) -> Optional[int]:
    """The output dimension holding ``module``'s channels, or None when SSF does not support it."""
    if isinstance(module, nn.Conv2d):
        return 1
    if isinstance(module, nn.Linear) or is_norm(module):
        return -1
    return None


def num_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.weight.shape[-1]


@torch.no_grad()
def scales_by_weight(norm: nn.Module) -> bool:
    """Whether ``norm`` computes n(x)·weight (+ bias), the form its merge assumes.

    Probed with a zero weight, which must leave exactly the bias. Gemma-style norms compute
    n(x)·(1 + weight) and fail, so their adapters are kept unmerged instead of merged wrongly.
    """
    weight = norm.weight
    saved = weight.data
    weight.data = torch.zeros_like(saved)
    try:
        out = norm(torch.randn(2, *saved.shape, dtype=saved.dtype, device=saved.device))
    finally:
        weight.data = saved
    bias = getattr(norm, "bias", None)
    return torch.equal(out, torch.zeros_like(out) if bias is None else bias.expand_as(out))


class SSFLayer(FtTunerLayer):
    """Wraps a Linear, Conv2d or norm module; holds one scale (and maybe one shift) per adapter."""

    method = "ssf"
    adapter_layer_names = ("ssf_scale", "ssf_shift")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any) -> None:
        super().__init__()
        self._init_tuner_state(base_layer, adapter_name)
        self.ssf_scale = nn.ParameterDict()
        self.ssf_shift = nn.ParameterDict()
        self.channel_dim = channel_dim(base_layer)
        self.update_layer(adapter_name, config)

    @property
    def has_bias(self) -> bool:
        return getattr(self.get_base_layer(), "bias", None) is not None

    def update_layer(self, adapter_name: str, config: Any) -> None:
        n = num_channels(self.get_base_layer())
        scale, shift = torch.ones(n), torch.zeros(n)
        if config.init_weights is False:
            # The reference code's init (dongzelian/SSF, models/vision_transformer.py): not an identity.
            nn.init.normal_(scale, mean=1.0, std=0.02)
            nn.init.normal_(shift, mean=0.0, std=0.02)
        self.ssf_scale[adapter_name] = nn.Parameter(scale)
        if self.has_bias or config.shift_without_bias:
            self.ssf_shift[adapter_name] = nn.Parameter(shift)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _channel_view(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.view(-1, 1, 1) if self.channel_dim == 1 else vector

    def apply_adapter(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        # In the output's dtype, so a bf16 base stays bf16 while γ, β are kept in fp32.
        result = result * self._channel_view(self.ssf_scale[adapter_name].to(result.dtype))
        if adapter_name in self.ssf_shift:
            result = result + self._channel_view(self.ssf_shift[adapter_name].to(result.dtype))
        return result

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        """Why ``adapter_name`` cannot be merged into this module, or None when it can."""
        if adapter_name in self.ssf_shift and not self.has_bias:
            return "shift on a module without bias"
        base = self.get_base_layer()
        if is_norm(base) and not scales_by_weight(base):
            return f"{type(base).__name__} does not compute n(x)·weight"
        return None

    def _weight_view(self, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Linear / Conv2d weights hold output channels in dim 0; norm weights in the last dim.
        return scale if is_norm(self.get_base_layer()) else scale.view(-1, *[1] * (weight.dim() - 1))

    def merged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        base = self.get_base_layer()
        scale = self.ssf_scale[adapter_name].detach().float()
        params = {"weight": base.weight.data.float() * self._weight_view(scale, base.weight)}
        if self.has_bias:
            params["bias"] = base.bias.data.float() * scale
            if adapter_name in self.ssf_shift:
                params["bias"] = params["bias"] + self.ssf_shift[adapter_name].detach().float()
        return params

    def unmerged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Divide the scale back out (exact up to rounding, like PEFT's IA³)."""
        base = self.get_base_layer()
        scale = self.ssf_scale[adapter_name].detach().float()
        params = {"weight": base.weight.data.float() / self._weight_view(scale, base.weight)}
        if self.has_bias:
            bias = base.bias.data.float()
            if adapter_name in self.ssf_shift:
                bias = bias - self.ssf_shift[adapter_name].detach().float()
            params["bias"] = bias / scale
        return params

    def __repr__(self) -> str:
        return "ssf." + super().__repr__()
