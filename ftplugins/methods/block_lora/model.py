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

from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ftplugins.errors import UnsupportedModelError
from ftplugins.tuners import FtTuner, classifier_heads, describe, in_selected_layers, output_heads, unwrapped_modules

from .layer import SUPPORTED, BlockLoraLayer, check_divisible, linear_features
from .options import ALL_LINEAR

#: Last name component of the attention q/k/v projections in transformers (Llama, CLIP, BERT, ViT, ...) and diffusers.
QKV_NAMES = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "to_q", "to_k", "to_v")


class BlockLoraModel(FtTuner):
    """Wraps the targeted layers in ``BlockLoraLayer``. Freezing, ``merge_and_unload`` and ``unload`` are
    BaseTuner's, which visits the tuner layers structurally."""

    prefix = "block_lora_"
    tuner_layer_cls = BlockLoraLayer
    method = "block_lora"
    merge_hint = (
        "Use it unmerged, or load the base model in full precision, load the adapter onto it with "
        "ftplugins.load_adapter and merge there."
    )

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model, "block_lora")
        targets = peft_config.target_modules
        if targets is None:
            resolved = qkv_targets(model)
        elif targets == ALL_LINEAR or (isinstance(targets, (list, set, tuple)) and list(targets) == [ALL_LINEAR]):
            resolved = all_linear_targets(model)
        else:
            resolved = None
        if resolved is not None:
            peft_config.target_modules = [name for name in resolved if in_selected_layers(peft_config, name)]
        modules = unwrapped_modules(model, see_through_aux=False)
        matched = [(n, m) for n, m in modules if check_target_module_exists(peft_config, n)]
        if not matched:
            raise UnsupportedModelError(
                f"block_lora: no module of {describe(model)} matches target_modules={targets!r} "
                f"(exclude_modules={peft_config.exclude_modules!r}, layers_to_transform="
                f"{peft_config.layers_to_transform!r}); Block-LoRA adapts {SUPPORTED}. Pass "
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

    def _create_new_module(self, peft_config: Any, adapter_name: str, target: nn.Module, key: str) -> nn.Module:
        return BlockLoraLayer(target, adapter_name, peft_config, module_name=key)


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
