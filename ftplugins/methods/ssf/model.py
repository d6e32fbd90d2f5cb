"""``SSFModel``: the PEFT tuner that wraps the targeted modules of a model in ``SSFLayer``.

Default targets follow the paper (§3.2: after every linear-like operation) rather than a fixed
per-architecture table: every Linear, Conv2d, LayerNorm and RMSNorm module except the output head
(the LM head or the classifier, which is trained in full through ``modules_to_save`` instead).
They are resolved from the model when the adapter is applied and saved, as explicit names, in
``adapter_config.json``, so a saved adapter always loads onto the same modules.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ftplugins.tuners import FtTuner, output_heads, unwrapped_modules

from .layer import SUPPORTED, SSFLayer, channel_dim


class SSFModel(FtTuner):
    """Wraps the targeted modules in ``SSFLayer``. Freezing (only γ, β and ``modules_to_save`` train),
    ``merge_and_unload`` and ``unload`` are BaseTuner's, which visits the tuner layers structurally."""

    prefix = "ssf_"
    tuner_layer_cls = SSFLayer
    method = "ssf"
    supported = SUPPORTED
    merge_hint = (
        "Use the adapter unmerged; to avoid a shift on modules without a bias, train with "
        "ssf_shift_without_bias=False (the default)."
    )

    def default_targets(self, peft_config: Any) -> list[str] | None:
        return default_targets(self.model) if peft_config.target_modules is None else None

    def supports(self, module: nn.Module) -> bool:
        return channel_dim(module) is not None

    def _create_new_module(self, peft_config: Any, adapter_name: str, target: nn.Module, key: str) -> nn.Module:
        return SSFLayer(target, adapter_name, peft_config)


def default_targets(model: nn.Module) -> list[str]:
    """Every supported module except the output head; the modules nn.MultiheadAttention owns are skipped
    too, because it reads their weights directly and never calls them."""
    excluded = output_heads(model)
    excluded += [name for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]
    return [
        name
        for name, module in unwrapped_modules(model, see_through_aux=False)
        if channel_dim(module) is not None and not any(name == e or name.startswith(e + ".") for e in excluded)
    ]
