"""``BlockLoraModel``: the PEFT tuner that wraps the targeted linear layers in ``BlockLoraLayer``.

Default targets follow CLIP-LoRA (the baseline whose protocol the paper inherits): the attention
query, key and value projections of every layer, found by name for any architecture
(``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``, ``to_q``/``to_k``/``to_v``).
``all-linear`` adapts every linear layer except the output head. Targets are resolved from the model
when the adapter is applied and saved as explicit names in ``adapter_config.json``, so a saved
adapter always loads onto the same modules; every targeted layer is checked (type, d_in divisible by
n) before any is replaced, so a refused adapter leaves the model untouched.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn

from ftplugins.errors import FtpluginsError, UnsupportedModelError

from ftplugins.quantized_cpu import guard_cpu_4bit_packing
from ftplugins.tuners import classifier_heads, describe, output_heads, unwrapped_modules

from .layer import SUPPORTED, BlockLoraLayer, check_divisible, linear_features
from .options import ALL_LINEAR

#: Last name component of the attention q/k/v projections in transformers (Llama, CLIP, BERT, ViT, ...) and diffusers.
QKV_NAMES = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "to_q", "to_k", "to_v")


class BlockLoraModel(BaseTuner):
    """Wraps the targeted layers in ``BlockLoraLayer``. Freezing, ``merge_and_unload`` and ``unload`` are
    BaseTuner's, which visits the tuner layers structurally."""

    prefix = "block_lora_"
    tuner_layer_cls = BlockLoraLayer
    target_module_mapping: dict[str, list[str]] = {}  # unused: defaults come from the model, see module docstring

    def _prepare_model(self, peft_config: Any, model: nn.Module) -> None:
        """An adapted model is trained: its bitsandbytes 4-bit layers must pass gradients on every CPU."""
        guard_cpu_4bit_packing(model, training=True)

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model, "block_lora")
        targets = peft_config.target_modules
        if targets is None:
            peft_config.target_modules = qkv_targets(model)
        elif targets == ALL_LINEAR or (isinstance(targets, (list, set, tuple)) and list(targets) == [ALL_LINEAR]):
            peft_config.target_modules = all_linear_targets(model)
        matched = [(n, m) for n, m in unwrapped_modules(model, see_through_aux=False) if check_target_module_exists(peft_config, n)]
        if not matched:
            raise UnsupportedModelError(
                f"block_lora: no module of {describe(model)} matches target_modules={targets!r} "
                f"(exclude_modules={peft_config.exclude_modules!r}); Block-LoRA adapts {SUPPORTED}. Pass "
                "--block_lora_target_modules with names from model.named_modules(), or 'all-linear'."
            )
        unsupported = [
            f"{name} ({type(module).__name__})" for name, module in matched if linear_features(module) is None
        ]
        if unsupported:
            raise UnsupportedModelError(
                f"block_lora: target_modules match modules of {describe(model)} that Block-LoRA cannot adapt: "
                f"{', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}; it adapts {SUPPORTED}. "
                "Narrow --block_lora_target_modules or add them to --block_lora_exclude_modules."
            )
        check_divisible([(name, linear_features(module)[0]) for name, module in matched], peft_config.num_blocks)
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, BlockLoraLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BlockLoraLayer(target, adapter_name, peft_config, module_name=current_key)
        new_module.train(target.training)  # a model wrapped in eval mode must not start dropping adapter inputs
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        super()._check_merge_allowed()
        # Check every layer before any is changed, so a refused merge leaves the model as it was.
        blocked = [
            f"{name} ({reason})"
            for name, module in self.model.named_modules()
            if isinstance(module, BlockLoraLayer) and (reason := module.merge_blocker())
        ]
        if blocked:
            raise FtpluginsError(
                f"block_lora: the adapter cannot be merged into {len(blocked)} module(s): {', '.join(blocked[:3])}"
                f"{' ...' if len(blocked) > 3 else ''}. Use it unmerged, or load the base model in full precision, "
                "load the adapter onto it with ftplugins.load_adapter and merge there."
            )


def qkv_targets(model: nn.Module) -> list[str]:
    """The attention query/key/value projections (CLIP-LoRA's targets), by name, among the linear layers."""
    found = [
        name
        for name, module in unwrapped_modules(model, see_through_aux=False)
        if name.rsplit(".", 1)[-1] in QKV_NAMES and linear_features(module) is not None
    ]
    if not found:
        raise UnsupportedModelError(
            f"block_lora: {describe(model)} has no attention projection named {', '.join(QKV_NAMES)}; pass "
            "--block_lora_target_modules with names from model.named_modules(), or 'all-linear'."
        )
    return found


def all_linear_targets(model: nn.Module) -> list[str]:
    """Every linear layer except the output head (the LM head or the classifier)."""
    excluded = output_heads(model)
    return [
        name
        for name, module in unwrapped_modules(model, see_through_aux=False)
        if linear_features(module) is not None and not any(name == e or name.startswith(e + ".") for e in excluded)
    ]
