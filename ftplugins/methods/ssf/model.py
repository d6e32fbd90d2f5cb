"""``SSFModel``: the PEFT tuner that wraps the targeted modules of a model in ``SSFLayer``.

Default targets follow the paper (§3.2: after every linear-like operation) rather than a fixed
per-architecture table: every Linear, Conv2d, LayerNorm and RMSNorm module except the output head
(the LM head or the classifier, which is trained in full through ``modules_to_save`` instead).
They are resolved from the model when the adapter is applied and saved, as explicit names, in
``adapter_config.json``, so a saved adapter always loads onto the same modules.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn

from ftplugins.errors import FtpluginsError, UnsupportedModelError
from ftplugins.quantized_cpu import guard_cpu_4bit_packing
from ftplugins.tuners import classifier_heads, describe, output_heads, unwrapped_modules

from .layer import SUPPORTED, SSFLayer, channel_dim

class SSFModel(BaseTuner):
    """Wraps the targeted modules in ``SSFLayer``. Freezing (only γ, β and ``modules_to_save`` train),
    ``merge_and_unload`` and ``unload`` are BaseTuner's, which visits the tuner layers structurally."""

    prefix = "ssf_"
    tuner_layer_cls = SSFLayer
    target_module_mapping: dict[str, list[str]] = {}  # unused: defaults come from the model, see module docstring

    def _prepare_model(self, peft_config: Any, model: nn.Module) -> None:
        """An adapted model is trained: its bitsandbytes 4-bit layers must pass gradients on every CPU."""
        guard_cpu_4bit_packing(model, training=True)

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model, "ssf")
        if peft_config.target_modules is None:
            peft_config.target_modules = default_targets(model)
        modules = unwrapped_modules(model, see_through_aux=False)
        matched = [(n, m) for n, m in modules if check_target_module_exists(peft_config, n)]
        if not matched:
            raise UnsupportedModelError(
                f"ssf: no module of {describe(model)} matches target_modules={peft_config.target_modules!r} "
                f"(exclude_modules={peft_config.exclude_modules!r}); SSF adapts {SUPPORTED}. Pass --ssf_target_modules "
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

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, SSFLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = SSFLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        super()._check_merge_allowed()
        # Check every layer before any is changed, so a refused merge leaves the model as it was.
        blocked = [
            f"{name} ({reason})"
            for name, module in self.model.named_modules()
            if isinstance(module, SSFLayer)
            for adapter in module.active_adapters
            if adapter in module.ssf_scale and (reason := module.merge_blocker(adapter))
        ]
        if blocked:
            raise FtpluginsError(
                f"ssf: the adapter cannot be merged into {len(blocked)} module(s): {', '.join(blocked[:5])}"
                f"{' ...' if len(blocked) > 5 else ''}. Use the adapter unmerged; to avoid a shift on modules without "
                "a bias, train with ssf_shift_without_bias=False (the default)."
            )





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
