"""``SSFModel``: the PEFT tuner that wraps the targeted modules of a model in ``SSFLayer``.

Default targets follow the paper (§3.2: after every linear-like operation) rather than a fixed
per-architecture table: every Linear, Conv2d, LayerNorm and RMSNorm module except the output head
(the LM head or the classifier, which is trained in full through ``modules_to_save`` instead).
They are resolved from the model when the adapter is applied and saved, as explicit names, in
``adapter_config.json``, so a saved adapter always loads onto the same modules.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ftplugins.errors import UnsupportedModelError
from ftplugins.tuners import FtTuner, classifier_heads, describe, in_selected_layers, output_heads, unwrapped_modules

from .layer import SUPPORTED, SSFLayer, channel_dim

class SSFModel(FtTuner):
    """Wraps the targeted modules in ``SSFLayer``. Freezing (only γ, β and ``modules_to_save`` train),
    ``merge_and_unload`` and ``unload`` are BaseTuner's, which visits the tuner layers structurally."""

    prefix = "ssf_"
    tuner_layer_cls = SSFLayer
    method = "ssf"
    merge_hint = (
        "Use the adapter unmerged; to avoid a shift on modules without a bias, train with "
        "ssf_shift_without_bias=False (the default)."
    )

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model, "ssf")
        if peft_config.target_modules is None:
            peft_config.target_modules = [name for name in default_targets(model) if in_selected_layers(peft_config, name)]
        modules = unwrapped_modules(model, see_through_aux=False)
        matched = [(n, m) for n, m in modules if check_target_module_exists(peft_config, n)]
        if not matched:
            raise UnsupportedModelError(
                f"ssf: no module of {describe(model)} matches target_modules={peft_config.target_modules!r} "
                f"(exclude_modules={peft_config.exclude_modules!r}, layers_to_transform="
                f"{peft_config.layers_to_transform!r}); SSF adapts {SUPPORTED}. Pass --ssf_target_modules "
                "with names from model.named_modules()."
            )
        unsupported = [f"{name} ({type(module).__name__})" for name, module in matched if channel_dim(module) is None]
        if unsupported:
            raise UnsupportedModelError(
                f"ssf: target_modules match modules of {describe(model)} that SSF cannot adapt: "
                f"{', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}; SSF adapts {SUPPORTED}. "
                "Narrow --ssf_target_modules or add them to --ssf_exclude_modules."
            )
        return peft_config

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
