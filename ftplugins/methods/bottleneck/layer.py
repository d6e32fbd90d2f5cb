"""The bottleneck adapter and the tuner layer that puts it around a Linear module (LLM-Adapters).

``BottleneckAdapter`` is f(z) = s·(U·φ(D·drop(z) + d) + u): a down projection D (d_in→b), a
non-linearity φ, an up projection U (b→d_out), optional biases d, u and a fixed or learned scale s.
Its maths is the one function ``ftplugins.kernels.bottleneck.bottleneck_adapter`` (torch, cuBLAS on CUDA),
which computes in fp32 and casts back, as LLM-Adapters does.

``BottleneckLinear`` wraps an ``nn.Linear`` (or a bitsandbytes ``Linear4bit`` / ``Linear8bitLt``,
whose forward and backward it only calls) and applies each active adapter at its placement:

* ``series_input``:  y = W(x + f(x)) + c      (LLM-Adapters' ``mh_adapter``)
* ``series_output``: y = h + f(h), h = Wx + c  (``output_adapter``)
* ``parallel``:      y = Wx + c + f(x)         (``parallel_adapter``)

Differences from the reference (AGI-Edgerunners/LLM-Adapters, peft/src/peft/tuners/bottleneck.py):

* The default init is an exact identity (U = 0, u = 0, D Kaiming-uniform), so the adapted model starts
  at the base model bit for bit; the reference's default "bert" init draws U ~ N(0, 0.02) and shifts
  every output at step 0. ``--bottleneck_init bert`` (``init_weights=False``) reproduces it.
* Only a parallel adapter with φ = identity is merged (W' = W + s·U·D, c' = c + s·(U·d + u)); every
  other adapter refuses ``merge_and_unload`` with the reason (non-linear φ, series placement,
  quantized base, adapter bias on a layer without bias). The reference cannot merge at all.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ftplugins.errors import FtpluginsError
from ftplugins.kernels import bottleneck as bottleneck_kernel
from ftplugins.tuners import FtTunerLayer

from .options import init_name
from .presets import PARALLEL, SERIES_INPUT, SERIES_OUTPUT


def bottleneck_width(features: int, size: int, reduction_factor: float) -> int:
    """b: ``size``, or ``round(features / reduction_factor)`` (at least 1) when a reduction factor is set."""
    if reduction_factor > 0:
        return max(1, round(features / reduction_factor))
    return size


class BottleneckAdapter(nn.Module):
    """f(z) = s·(U·φ(D·drop(z) + d) + u), added to ``residual`` when one is given.

    Parameters are kept in fp32 whatever the base model's dtype (the kernel computes in fp32 anyway).
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int,
        activation: str,
        bias: bool,
        scaling: float,
        learn_scaling: bool,
        dropout: float,
        init: str,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.down = nn.Parameter(torch.empty(width, in_features))
        self.up = nn.Parameter(torch.empty(out_features, width))
        self.down_bias = nn.Parameter(torch.zeros(width)) if bias else None
        self.up_bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if learn_scaling:
            self.scale = nn.Parameter(torch.full((1,), float(scaling)))
        else:
            self.scale = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        if init == "identity":
            # D as LoRA's A / LLM-Adapters' "mam_adapter" init; U = 0 makes f = 0 exactly.
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            nn.init.zeros_(self.up)
        elif init == "bert":
            nn.init.normal_(self.down, std=0.02)
            nn.init.normal_(self.up, std=0.02)
        elif init == "petl_zero":
            nn.init.zeros_(self.down)
            nn.init.zeros_(self.up)
        else:
            raise ValueError(f"init {init!r}: expected identity, bert or petl_zero")
        for bias in (self.down_bias, self.up_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    @property
    def in_features(self) -> int:
        return self.down.shape[1]

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Looked up on the module at call time so the dispatcher (and a test's spy) is always the one used.
        return bottleneck_kernel.bottleneck_adapter(
            self.dropout(x), self.down, self.up, self.scale, self.activation, residual, self.down_bias, self.up_bias
        )

    @torch.no_grad()
    def delta(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(ΔW, Δc) in fp32 of a linear (φ = identity) adapter: f(x) = ΔW·x + Δc."""
        scale = self.scale.detach().float() if isinstance(self.scale, torch.Tensor) else self.scale
        delta_weight = scale * (self.up.float() @ self.down.float())
        if self.down_bias is None:
            return delta_weight, None
        return delta_weight, scale * (self.up.float() @ self.down_bias.float() + self.up_bias.float())

    def extra_repr(self) -> str:
        scale = "learned" if isinstance(self.scale, torch.Tensor) else self.scale
        return (
            f"{self.in_features} -> {self.down.shape[0]} -> {self.out_features}, activation={self.activation}, "
            f"bias={self.down_bias is not None}, scale={scale}"
        )


class BottleneckLayer(FtTunerLayer):
    """What every tuner layer of this method shares: one ``nn.ModuleDict`` of adapters by adapter name."""

    method = "bottleneck"
    adapter_layer_names = ("bottleneck_adapter",)

    def _init_tuner_state(self, base_layer: nn.Module, adapter_name: str) -> None:
        super()._init_tuner_state(base_layer, adapter_name)
        self.bottleneck_adapter = nn.ModuleDict()

    def _active_here(self) -> list[str]:
        return [name for name in self.active_adapters if name in self.bottleneck_adapter]

    def _place_adapter(self, adapter_name: str, adapter: nn.Module, inference_mode: bool) -> None:
        base = self.get_base_layer()
        device = next((p.device for p in base.parameters()), None)
        # Device only: adapters stay fp32 on a bf16 / quantized base (PEFT would cast them to the base dtype).
        # Train/eval mode follows the base (a model wrapped in eval mode keeps its dropout and BatchNorm in eval).
        # Adapters created on the meta device (low_cpu_mem_usage) stay there until their weights are loaded.
        adapter.train(base.training)
        on_meta = any(p.is_meta for p in adapter.parameters())
        self.bottleneck_adapter[adapter_name] = adapter if device is None or on_meta else adapter.to(device)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        """Why ``adapter_name`` cannot be merged into this layer's base module, or None when it can."""
        raise NotImplementedError


def is_quantized(module: nn.Module) -> bool:
    """bitsandbytes layers (and any layer whose weight is not a float tensor) cannot take a merged delta."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        return True
    return type(module).__module__.startswith("bitsandbytes")


class BottleneckLinear(BottleneckLayer):
    """A Linear module with bottleneck adapters in series (input or output side) or in parallel."""

    other_param_names = ("placement",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, placement: str) -> None:
        super().__init__()
        self._init_tuner_state(base_layer, adapter_name)
        self.placement: dict[str, str] = {}
        self.update_layer(adapter_name, config, placement)

    def update_layer(self, adapter_name: str, config: Any, placement: str) -> None:
        if placement not in (SERIES_INPUT, SERIES_OUTPUT, PARALLEL):
            raise FtpluginsError(f"bottleneck: unknown Linear placement {placement!r} in the adapter config")
        base = self.get_base_layer()
        d_in, d_out = base.in_features, base.out_features
        # A series adapter maps a vector to one of the same width: the input (d_in) or the output (d_out).
        in_features, out_features = {SERIES_INPUT: (d_in, d_in), SERIES_OUTPUT: (d_out, d_out)}.get(
            placement, (d_in, d_out)
        )
        adapter = BottleneckAdapter(
            in_features,
            bottleneck_width(in_features, config.bottleneck_size, config.reduction_factor),
            out_features,
            activation="tanh" if config.activation == "auto" else config.activation,
            bias=config.adapter_bias,
            scaling=config.scaling,
            learn_scaling=config.learn_scaling,
            dropout=config.dropout,
            init=init_name(config.init_weights),
        )
        self.placement[adapter_name] = placement
        self._place_adapter(adapter_name, adapter, config.inference_mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = self._active_here()
        source = x
        for name in active:
            if self.placement[name] == SERIES_INPUT:
                x = self.bottleneck_adapter[name](x, residual=x)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            if self.placement[name] == PARALLEL:
                result = self.bottleneck_adapter[name](source, residual=result).to(result.dtype)
        for name in active:
            if self.placement[name] == SERIES_OUTPUT:
                result = self.bottleneck_adapter[name](result, residual=result)
        return result

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        placement = self.placement[adapter_name]
        adapter = self.bottleneck_adapter[adapter_name]
        base = self.get_base_layer()
        if placement != PARALLEL:
            return f"{placement} placement (only parallel adapters merge)"
        if adapter.activation != "identity":
            return f"non-linear activation {adapter.activation!r} (only activation identity merges)"
        if is_quantized(base):
            return f"quantized base layer {type(base).__name__}"
        if adapter.down_bias is not None and base.bias is None:
            return "adapter biases on a base layer without bias"
        return None

    def merged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return self._shifted_params(adapter_name, sign=1)

    def unmerged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return self._shifted_params(adapter_name, sign=-1)

    def _shifted_params(self, adapter_name: str, sign: int) -> dict[str, torch.Tensor]:
        """W ± s·U·D and c ± s·(U·d + u), in fp32."""
        base = self.get_base_layer()
        delta_weight, delta_bias = self.bottleneck_adapter[adapter_name].delta()
        params = {"weight": base.weight.data.float() + sign * delta_weight.to(base.weight.device)}
        if delta_bias is not None:
            params["bias"] = base.bias.data.float() + sign * delta_bias.to(base.bias.device)
        return params

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
