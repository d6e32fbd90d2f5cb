"""``BottleneckModel``: the PEFT tuner that wraps Linear modules (LLM-Adapters) or block sublayers (PETL-AST).

When the adapter is applied, the preset and options are resolved against the model into
``config.layer_roles`` (full module name -> placement) and ``config.target_modules`` (those names), and
both are saved in ``adapter_config.json``: a saved adapter loads onto exactly the modules, with exactly the
placements, it was trained with, whatever the preset tables say later. Freezing, ``unload`` and the
state-dict plumbing are BaseTuner's; merging is refused up front, for every layer at once, unless every
active adapter is mergeable (parallel, φ = identity).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.tuners import FtTuner, classifier_heads, describe, in_selected_layers, is_excluded, model_type_of
from ftplugins.tuners import unwrapped_modules

from .blocks import LAYOUTS, BottleneckSublayer, InputTap, find_blocks, parts_needed, resolved_position
from .layer import BottleneckLayer, BottleneckLinear
from .presets import PARALLEL, PRESETS, SERIES_INPUT, SERIES_OUTPUT

ADAPTERS = BottleneckLayer.adapter_layer_names[0]


class BottleneckModel(FtTuner):
    prefix = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    method = "bottleneck"
    merge_hint = (
        "Only parallel adapters with --bottleneck_activation identity on unquantized Linear modules merge "
        "(W' = W + s·U·D); use this adapter unmerged."
    )

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the roles need the modules
        if peft_config.layer_roles is None:
            peft_config.layer_roles = resolve_layer_roles(model, peft_config)
            peft_config.target_modules = list(peft_config.layer_roles)
        elif peft_config.target_modules is None:
            peft_config.target_modules = list(peft_config.layer_roles)
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = default_modules_to_save(model, peft_config)
        return peft_config

    def _role(self, peft_config: Any, key: str) -> dict[str, Any]:
        role = (peft_config.layer_roles or {}).get(key)
        if role is None:
            raise FtpluginsError(
                f"bottleneck: {key} matches target_modules but the adapter config has no layer_roles entry for "
                "it; leave layer_roles unset (it is filled when the adapter is applied) or list the module there."
            )
        return role

    def _tap(self, adapter_name: str, role: dict[str, Any]) -> InputTap:
        # One tap per (adapter, block, sublayer), shared by the entry and exit wrappers of that sublayer.
        taps = self.__dict__.setdefault("_bottleneck_taps", {})
        return taps.setdefault((adapter_name, role["block"], role["sublayer"]), InputTap())

    def _update_layer(self, layer: nn.Module, peft_config: Any, adapter_name: str, key: str) -> None:
        role = self._role(peft_config, key)
        if isinstance(layer, BottleneckSublayer):
            layer.update_layer(adapter_name, peft_config, role, self._tap(adapter_name, role))
        else:
            layer.update_layer(adapter_name, peft_config, role["placement"])

    def _create_new_module(self, peft_config: Any, adapter_name: str, target: nn.Module, key: str) -> nn.Module:
        role = self._role(peft_config, key)
        if role["placement"] == "block":
            return BottleneckSublayer(target, adapter_name, peft_config, role, self._tap(adapter_name, role))
        if not isinstance(target, nn.Linear):
            raise UnsupportedModelError(
                f"bottleneck: {key} is a {type(target).__name__}; {role['placement']} adapters wrap Linear "
                "modules (bitsandbytes Linear4bit / Linear8bitLt included)."
            )
        return BottleneckLinear(target, adapter_name, peft_config, role["placement"])

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Adapters are modules of a ModuleDict, and a conformer's parameters sit one level deeper
        # (``bottleneck_adapter.default.depthwise.weight``) than PEFT's default expects: drop the adapter
        # name right after the ModuleDict, so an adapter loads under any adapter name.
        head, marker, tail = key.rpartition(f".{ADAPTERS}.{adapter_name}.")
        if marker:
            return f"{head}.{ADAPTERS}.{tail}"
        return super()._remove_adapter_name_from_key(key, adapter_name)


# --- resolving presets against a model -------------------------------------------------------------


def resolve_layer_roles(model: nn.Module, config: Any) -> dict[str, dict[str, Any]]:
    """The preset's roles, in the layers ``layers_to_transform`` selects, less ``exclude_modules`` (a block
    sublayer goes as a whole when any of its wrapped modules is excluded)."""
    preset = PRESETS[config.preset]
    modules = unwrapped_modules(model)
    if preset.kind == "linear":
        roles = linear_roles(model, modules, config, preset)
    else:
        roles = block_roles(model, modules, config, preset)
    dropped = {_unit(name, role) for name, role in roles.items()
               if is_excluded(config, name) or not in_selected_layers(config, name)}
    kept = {name: role for name, role in roles.items() if _unit(name, role) not in dropped}
    if not kept:
        raise UnsupportedModelError(
            f"bottleneck: every module preset {preset.name} places adapters on in {describe(model)} is excluded "
            f"(exclude_modules={config.exclude_modules!r}, layers_to_transform={config.layers_to_transform!r}); "
            "narrow the exclusions."
        )
    return kept


def _unit(name: str, role: dict[str, Any]) -> tuple:
    """What is placed or dropped as a whole: a Linear module, or one sublayer of one block."""
    return (role["block"], role["sublayer"]) if role["placement"] == "block" else (name,)


def linear_roles(model: nn.Module, modules: list, config: Any, preset: Any) -> dict[str, dict[str, Any]]:
    model_type = model_type_of(model)
    targets = config.target_modules
    if targets is None:
        targets = preset.targets(model_type)
        if targets is None:
            raise UnsupportedModelError(
                f"bottleneck: preset {preset.name} has no default target modules for {describe(model)}; its table "
                f"covers model types {', '.join(sorted(preset.per_model_type))}. Pass --bottleneck_target_modules with "
                "Linear module names from model.named_modules(), or use a block preset (pfeiffer, houlsby) for ViT, "
                "AST and BERT encoders."
            )
    matched = [(name, module) for name, module in modules if matches(targets, name)]
    if not matched:
        raise UnsupportedModelError(
            f"bottleneck: no module of {describe(model)} matches target modules {list(targets)!r} (preset "
            f"{preset.name}); pass --bottleneck_target_modules with Linear module names from model.named_modules()."
        )
    not_linear = [f"{name} ({type(module).__name__})" for name, module in matched if not isinstance(module, nn.Linear)]
    if not_linear:
        raise UnsupportedModelError(
            f"bottleneck: target modules of {describe(model)} that are not Linear: {', '.join(not_linear[:5])}"
            f"{' ...' if len(not_linear) > 5 else ''}; preset {preset.name} wraps Linear modules. Narrow "
            "--bottleneck_target_modules, or use a block preset (pfeiffer, houlsby) for transformer blocks."
        )
    roles, unknown = {}, []
    for name, _ in matched:
        if not preset.series:
            placement = PARALLEL
        elif config.series_side != "auto":
            placement = SERIES_INPUT if config.series_side == "input" else SERIES_OUTPUT
        else:
            placement = preset.side(model_type, name)
            if placement is None:
                unknown.append(name)
        roles[name] = {"placement": placement}
    if unknown:
        raise OptionError(
            f"bottleneck: which side of {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''} a series adapter "
            f"goes on is not in LLM-Adapters' table for {describe(model)}; pass --bottleneck_series_side input "
            "(y = W(x + f(x)) + c) or output (y = h + f(h))."
        )
    return roles


def block_roles(model: nn.Module, modules: list, config: Any, preset: Any) -> dict[str, dict[str, Any]]:
    blocks = find_blocks(modules)
    if not blocks:
        raise UnsupportedModelError(
            f"bottleneck: preset {preset.name} adapts transformer blocks, and {describe(model)} has none of the "
            f"supported block classes ({', '.join(LAYOUTS)}). Use a Linear preset for this model (e.g. "
            "llm_adapters_parallel with --bottleneck_target_modules)."
        )
    by_name = dict(modules)
    position = resolved_position(config)
    roles = {}
    for block, layout in blocks:
        for sublayer_name in preset.sublayers:
            sublayer = layout.sublayers[sublayer_name]
            paths = (sublayer.entry, sublayer.exit, sublayer.norm)
            missing = [path for path in paths if f"{block}.{path}" not in by_name]
            if missing:
                raise UnsupportedModelError(
                    f"bottleneck: block {block} of {describe(model)} ({type(model.get_submodule(block)).__name__}) "
                    f"lacks {', '.join(missing)}, which its layout names for the {sublayer_name} sublayer."
                )
            features = layer_norm_width(by_name[f"{block}.{sublayer.norm}"])
            for path, part in parts_needed(config.block_mode, position, sublayer).items():
                roles[f"{block}.{path}"] = {
                    "placement": "block", "sublayer": sublayer_name, "part": part, "block": block, "features": features,
                }
    return roles


def default_modules_to_save(model: nn.Module, config: Any) -> list[str]:
    """The classification head; for block presets with ``train_norms`` also the sublayers' LayerNorms and the
    final LayerNorm (PETL-AST trains them with the adapters)."""
    saved = classifier_heads(model, "bottleneck")
    preset = PRESETS[config.preset]
    if preset.kind != "block" or not config.train_norms:
        return saved
    names = {name for name, _ in unwrapped_modules(model)}
    adapted = {(role["block"], role["sublayer"]) for role in (config.layer_roles or {}).values() if "block" in role}
    for block, layout in find_blocks(unwrapped_modules(model)):
        saved += [f"{block}.{layout.sublayers[s].norm}" for s in preset.sublayers if (block, s) in adapted]
        final = final_norm(block, layout.final_norm, names)
        if final and final not in saved:
            saved.append(final)
    return saved


def final_norm(block: str, norm_name: str | None, names: set[str]) -> str | None:
    """The final LayerNorm: ``norm_name`` as a child of the nearest ancestor of ``block`` that has one."""
    if norm_name is None:
        return None
    parts = block.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        candidate = ".".join([*parts[:depth], norm_name])
        if candidate in names:
            return candidate
    return None


# --- small helpers ---------------------------------------------------------------------------------


def matches(targets: Any, name: str) -> bool:
    """PEFT's target matching: a string is a regex on the full name, a list holds names or name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith("." + target) for target in targets)



def layer_norm_width(norm: nn.Module) -> int:
    shape = getattr(norm, "normalized_shape", None)
    if not shape and getattr(norm, "weight", None) is not None and norm.weight.dim() == 1:
        shape = tuple(norm.weight.shape)  # RMSNorm (Llama, Mistral, Qwen2) keeps no normalized_shape
    if not shape:
        raise UnsupportedModelError(f"bottleneck: expected a LayerNorm, found {type(norm).__name__}")
    return int(shape[-1])


