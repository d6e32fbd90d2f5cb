"""``SSFModel``: the PEFT tuner that wraps the targeted modules of a model in ``SSFLayer``.

Default targets follow the paper (§3.2: after every linear-like operation) rather than a fixed
per-architecture table: every Linear, Conv2d, LayerNorm and RMSNorm module except the output head
(the LM head or the classifier, which is trained in full through ``modules_to_save`` instead).
They are resolved from the model when the adapter is applied and saved, as explicit names, in
``adapter_config.json``, so a saved adapter always loads onto the same modules.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import AuxiliaryTrainingWrapper
from torch import nn

from ftplugins.errors import FtpluginsError, UnsupportedModelError

from .layer import SUPPORTED, SSFLayer, channel_dim

#: Attribute names of the classification heads that transformers models use.
CLASSIFIER_HEADS = ("classifier", "score")
CLASSIFIER_MODELS = ("ForSequenceClassification", "ForImageClassification")


class SSFModel(BaseTuner):
    """Wraps the targeted modules in ``SSFLayer``. Freezing (only γ, β and ``modules_to_save`` train),
    ``merge_and_unload`` and ``unload`` are BaseTuner's, which visits the tuner layers structurally."""

    prefix = "ssf_"
    tuner_layer_cls = SSFLayer
    target_module_mapping: dict[str, list[str]] = {}  # unused: defaults come from the model, see module docstring

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model)
        if peft_config.target_modules is None:
            peft_config.target_modules = default_targets(model)
        matched = [(n, m) for n, m in unwrapped_modules(model) if check_target_module_exists(peft_config, n)]
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


def unwrapped_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the base model's modules, seeing through PEFT wrappers added earlier."""
    found, wrappers = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrappers):
            continue
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            wrappers.append(name)
            if isinstance(module, AuxiliaryTrainingWrapper):
                continue
            module = module.get_base_layer()
        found.append((name, module))
    return found


def classifier_heads(model: nn.Module) -> list[str]:
    """The classifier head of a sequence / image classification model (trained in full), else []."""
    if not type(model).__name__.endswith(CLASSIFIER_MODELS):
        return []
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    if not heads:
        raise UnsupportedModelError(
            f"ssf: {describe(model)} has no classifier head named {' or '.join(CLASSIFIER_HEADS)}; "
            "pass --ssf_modules_to_save with the head's module name."
        )
    return heads


def output_heads(model: nn.Module) -> list[str]:
    """The LM head and classifier heads: never scaled and shifted by default."""
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    try:
        lm_head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        lm_head = None
    if lm_head is not None:
        heads += [name for name, module in model.named_modules() if module is lm_head]
    return heads


def default_targets(model: nn.Module) -> list[str]:
    """Every supported module except the output head; the modules nn.MultiheadAttention owns are skipped
    too, because it reads their weights directly and never calls them."""
    excluded = output_heads(model)
    excluded += [name for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]
    return [
        name
        for name, module in unwrapped_modules(model)
        if channel_dim(module) is not None and not any(name == e or name.startswith(e + ".") for e in excluded)
    ]


def describe(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__}" + (f" (model_type {model_type})" if model_type else "")
