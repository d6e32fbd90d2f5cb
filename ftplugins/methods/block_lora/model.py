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

from torch import nn

from ftplugins.errors import UnsupportedModelError
from ftplugins.tuners import FtTuner, describe, output_heads, unwrapped_modules

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
    supported = SUPPORTED
    merge_hint = (
        "Use it unmerged, or load the base model in full precision, load the adapter onto it with "
        "ftplugins.load_adapter and merge there."
    )

    def default_targets(self, peft_config: Any) -> list[str] | None:
        targets = peft_config.target_modules
        if targets is None:
            return qkv_targets(self.model)
        if targets == ALL_LINEAR or (isinstance(targets, (list, set, tuple)) and list(targets) == [ALL_LINEAR]):
            return all_linear_targets(self.model)
        return None

    def supports(self, module: nn.Module) -> bool:
        return linear_features(module) is not None

    def check_targets(self, peft_config: Any, matched: list[tuple[str, nn.Module]]) -> None:
        check_divisible([(name, linear_features(module)[0]) for name, module in matched], peft_config.num_blocks)

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
