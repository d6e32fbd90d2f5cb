"""``BlockLoraLayer``: a linear layer plus the Block-LoRA update ΔW = s·B·[A*, A*, ..., A*].

The input x ∈ R^{d_in} is cut into n chunks x_1..x_n of size d_in/n. Because every column block of
ΔW is the same B·A*, the update needs no n matmuls:

    ΔW x = s·Σ_j B·A*·x_j = s·B·A*·(Σ_j x_j)

so the forward pass adds the n chunks (a reshape and a sum) and runs one r×(d_in/n) projection
("one head") followed by the d_out×r up-projection ("eight arms" being the n blocks of the input).
Merging writes the dense ΔW (A* tiled n times along the input axis) into the base weight.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ftplugins.errors import UnsupportedModelError
from ftplugins.tuners import FtTunerLayer

SUPPORTED = (
    "Linear layers (torch.nn.Linear and its subclasses, e.g. bitsandbytes Linear4bit/Linear8bitLt) and transformers' "
    "Conv1D"
)


def linear_features(module: nn.Module) -> Optional[tuple[int, int, bool]]:
    """(d_in, d_out, fan_in_fan_out) of a linear layer, or None when Block-LoRA does not support ``module``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2 style: weight is [d_in, d_out]
        d_in, d_out = module.weight.shape
        return d_in, d_out, True
    return None


def check_divisible(names_and_inputs: list[tuple[str, int]], n: int) -> None:
    """Block-LoRA cuts the input into n equal chunks: every adapted layer's d_in must be divisible by n."""
    bad = [(name, d_in) for name, d_in in names_and_inputs if d_in % n]
    if not bad:
        return
    listed = ", ".join(f"{name} (d_in={d_in})" for name, d_in in bad[:5]) + (" ..." if len(bad) > 5 else "")
    d_in = bad[0][1]
    divisors = [k for k in range(2, min(d_in, 64) + 1) if d_in % k == 0] or [1]
    raise UnsupportedModelError(
        f"block_lora: block_lora_n={n} does not divide the input size d_in of {len(bad)} targeted module(s): {listed}. "
        f"Block-LoRA splits each layer's input into n equal blocks that share one down-projection; choose "
        f"--block_lora_n dividing every d_in (for d_in={d_in}: {', '.join(map(str, divisors))}) or leave these modules "
        "out with --block_lora_exclude_modules."
    )


class BlockLoraLayer(FtTunerLayer):
    """Wraps a linear layer; holds per adapter the shared down-projection A* [r, d_in/n] and B [d_out, r]."""

    method = "block_lora"
    adapter_layer_names = ("block_lora_A", "block_lora_B")
    other_param_names = ("r", "scaling", "num_blocks", "block_lora_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, module_name: str = "") -> None:
        super().__init__()
        features = linear_features(base_layer)
        if features is None:
            raise UnsupportedModelError(
                f"block_lora: {module_name or 'module'} is a {type(base_layer).__name__}; "
                f"Block-LoRA adapts {SUPPORTED}."
            )
        self._init_tuner_state(base_layer, adapter_name)
        self.in_features, self.out_features, self.fan_in_fan_out = features
        self.module_name = module_name
        self.block_lora_A = nn.ParameterDict()
        self.block_lora_B = nn.ParameterDict()
        self.block_lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.num_blocks: dict[str, int] = {}
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: Any) -> None:
        n, r = config.num_blocks, config.r
        check_divisible([(self.module_name or type(self.get_base_layer()).__name__, self.in_features)], n)
        shared_a, b = torch.empty(r, self.in_features // n), torch.zeros(self.out_features, r)
        # Standard LoRA init (the paper builds on CLIP-LoRA, which uses it): A* as nn.Linear's default
        # (Kaiming-uniform, a=√5, over A*'s own fan-in d_in/n), B = 0 so the adapted model starts at the base.
        nn.init.kaiming_uniform_(shared_a, a=math.sqrt(5))
        if config.init_weights is False:  # PEFT's convention: a random, non-identity update (for tests)
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        self.block_lora_A[adapter_name] = nn.Parameter(shared_a)
        self.block_lora_B[adapter_name] = nn.Parameter(b)
        self.block_lora_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.alpha / r
        self.num_blocks[adapter_name] = n
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """s·B·A*·(Σ_j x_j): the update applied to ``x`` with one small matmul instead of n."""
        shared_a, b = self.block_lora_A[adapter_name], self.block_lora_B[adapter_name]
        x = self._cast_input_dtype(x, shared_a.dtype)
        x = self.block_lora_dropout[adapter_name](x)
        n = self.num_blocks[adapter_name]
        summed = x.unflatten(-1, (n, self.in_features // n)).sum(dim=-2)
        return nn.functional.linear(nn.functional.linear(summed, shared_a), b) * self.scaling[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense ΔW = s·B·[A*, ..., A*] in fp32, shaped like the base weight."""
        shared_a = self.block_lora_A[adapter_name].detach().float()
        b = self.block_lora_B[adapter_name].detach().float()
        delta = (b @ shared_a.repeat(1, self.num_blocks[adapter_name])) * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta

    def apply_adapter(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        return result + self.delta(adapter_name, x).to(result.dtype)

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        """Why the update cannot be written into the base weight, or None when it can."""
        weight = getattr(self.get_base_layer(), "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
            kind = type(weight).__name__ if weight is not None else "no weight"
            return (
                f"the base weight is quantized ({kind}, {getattr(weight, 'dtype', None)}); merge into a full-precision "
                "copy of the base model instead"
            )
        return None

    def merged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        weight = self.get_base_layer().weight
        return {"weight": weight.data.float() + self.delta_weight(adapter_name).to(weight.device)}

    def unmerged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        weight = self.get_base_layer().weight
        return {"weight": weight.data.float() - self.delta_weight(adapter_name).to(weight.device)}

    def __repr__(self) -> str:
        return "block_lora." + super().__repr__()
