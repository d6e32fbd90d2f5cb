"""The scaffolding every ftplugins PEFT tuner shares, so a new tuner is config + layer maths + a short model.

* :class:`FtTunerConfig`: the fields every PEFT tuner config has, with PEFT's meanings (``target_modules``,
  ``exclude_modules``, ``modules_to_save``, ``layers_to_transform``, ``layers_pattern``, ``init_weights``).
* :class:`FtTunerLayer`: a ``BaseTunerLayer`` whose ``merge`` / ``unmerge`` are written once: each adapter
  says why it cannot merge (``merge_blocker``) and what the base parameters become (``merged_params`` /
  ``unmerged_params``, in fp32); the base does PEFT's ``safe_merge`` check (nothing is written when the result
  is not finite) and the casts back to the base dtype.
* :class:`FtTuner`: a ``BaseTuner`` with PEFT's ``_create_and_replace`` (update an existing layer, else wrap the
  target in a new one, frozen unless its adapter is active) and a merge check that refuses, for every layer at
  once and before any is changed, an adapter some layer cannot merge.
* What every tuner needs to know about the model it adapts: the modules of the base model seen through PEFT
  wrappers, its output heads (never adapted by default), its classifier head (trained in full by default), the
  layers PEFT's ``layers_to_transform`` / ``layers_pattern`` select, and a one-line description for errors.
"""

from __future__ import annotations

import re
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge, check_target_module_exists
from peft.utils import AuxiliaryTrainingWrapper
from torch import nn

from .errors import FtpluginsError, UnsupportedModelError
from .quantized_cpu import guard_cpu_4bit_packing

#: Attribute names of the classification heads transformers models use.
CLASSIFIER_HEADS = ("classifier", "score")
#: Class-name endings of models whose head is a freshly initialised classifier.
CLASSIFIER_MODELS = (
    "ForSequenceClassification",
    "ForImageClassification",
    "ForAudioClassification",
    "ForTokenClassification",
)


def unwrapped_modules(model: nn.Module, see_through_aux: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, module) of the base model's modules, seeing through PEFT wrappers added earlier.

    A tuner layer stands for its base layer. A ``modules_to_save`` / trainable-token wrapper
    stands for its original module, or is skipped when ``see_through_aux`` is False.
    """
    found, wrappers = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrappers):
            continue
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            wrappers.append(name)
            if isinstance(module, BaseTunerLayer):
                module = module.get_base_layer()
            elif see_through_aux:
                module = getattr(module, "original_module", module)
            else:
                continue
        found.append((name, module))
    return found


def classifier_heads(model: nn.Module, method: str) -> list[str]:
    """The classifier head of a classification model (trained in full), else []."""
    if not type(model).__name__.endswith(CLASSIFIER_MODELS):
        return []
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    if not heads:
        raise UnsupportedModelError(
            f"{method}: {describe(model)} has no classifier head named {' or '.join(CLASSIFIER_HEADS)}; "
            f"pass --{method}_modules_to_save with the head's module name."
        )
    return heads


def output_heads(model: nn.Module) -> list[str]:
    """Names of the LM head and classifier heads: never adapted by default."""
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    try:
        lm_head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        lm_head = None
    if lm_head is not None:
        heads += [name for name, module in model.named_modules() if module is lm_head]
    return heads


def model_type_of(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def describe(model: nn.Module) -> str:
    """``LlamaForCausalLM (model_type llama)``: how error messages name a model."""
    model_type = model_type_of(model)
    return f"{type(model).__name__}" + (f" (model_type {model_type})" if model_type else "")


@dataclass
class FtTunerConfig(PeftConfig):
    """The fields every PEFT tuner config has, with PEFT's meanings, so code written for PEFT tuners (PEFT's
    own generic tests among it) drives ours. A subclass adds its method's fields, sets ``peft_type`` in
    ``__post_init__``, and lists in ``init_aliases`` the values of its deprecated ``init`` field."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names, name suffixes or a regex (full match) to adapt."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names, name suffixes or a regex (full match) not to adapt."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules trained in full and saved. None: the classifier head of classification models."},
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={"help": "Adapt only the layers with these indices (PEFT's rule: the first number in a name)."},
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "With layers_to_transform: the name of the layer list holding the index ('layers', 'h')."},
    )
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={"help": "True: the identity init (the adapted model starts at the base model). False: a random, "
                  "non-identity init (the reference code's or, for tests, any)."},
    )
    # TRL reads and may set this (new tokens); PEFT then trains those embedding rows.
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None, metadata={"help": "Token ids whose embedding rows are trained too (set by TRL for new tokens)."}
    )
    init: Optional[str] = field(
        default=None, metadata={"help": "Deprecated, use init_weights; read from adapters saved before it existed."}
    )

    #: Values of the deprecated ``init`` field -> ``init_weights``.
    init_aliases: ClassVar[dict[str, Union[bool, str]]] = {}
    #: Values ``init_weights`` takes besides True and False.
    named_inits: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        check_layers_options(self)
        if self.init is not None:
            self._migrate_init()
        if not (isinstance(self.init_weights, bool) or self.init_weights in self.named_inits):
            expected = ", ".join(["True", "False", *map(repr, self.named_inits)])
            raise ValueError(f"{type(self).__name__}.init_weights {self.init_weights!r}: expected one of {expected}.")

    def _migrate_init(self) -> None:
        name = type(self).__name__
        if self.init not in self.init_aliases:
            raise ValueError(
                f"{name}.init {self.init!r}: expected one of {', '.join(self.init_aliases)} (or use init_weights)."
            )
        value = self.init_aliases[self.init]
        if self.init_weights is not True and self.init_weights != value:
            raise ValueError(
                f"{name}: init {self.init!r} (deprecated) and init_weights {self.init_weights!r} disagree; "
                "give init_weights only."
            )
        warnings.warn(
            f"{name}.init is deprecated; use init_weights={value!r} (True: identity, False: random non-identity).",
            FutureWarning,
            stacklevel=3,
        )
        self.init_weights, self.init = value, None

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values.pop("init", None)  # migrated into init_weights: saves carry the PEFT name only
        return values


def in_selected_layers(config: Any, name: str) -> bool:
    """Whether module ``name`` lies in the layers ``config.layers_to_transform`` / ``layers_pattern`` select,
    with PEFT's own rule (``check_target_module_exists``); True when no layers are selected.

    For defaults a tuner resolves itself into full module names, which PEFT's matching would take as exact
    names and so never filter by layer.
    """
    if getattr(config, "layers_to_transform", None) is None:
        return True
    probe = types.SimpleNamespace(
        target_modules=[name.rsplit(".", 1)[-1]],
        layers_to_transform=config.layers_to_transform,
        layers_pattern=getattr(config, "layers_pattern", None),
        target_parameters=None,
    )
    return bool(check_target_module_exists(probe, name))


def is_excluded(config: Any, name: str) -> bool:
    """PEFT's ``exclude_modules`` rule: a string is a regex on the full name, a list holds names or suffixes."""
    excluded = getattr(config, "exclude_modules", None)
    if not excluded:
        return False
    if isinstance(excluded, str):
        return re.fullmatch(excluded, name) is not None
    return name in excluded or any(name.endswith("." + suffix) for suffix in excluded)


def check_layers_options(config: Any) -> None:
    """PEFT's rule: ``layers_pattern`` only means something together with ``layers_to_transform``."""
    if getattr(config, "layers_pattern", None) and getattr(config, "layers_to_transform", None) is None:
        raise ValueError(
            f"{type(config).__name__}: layers_pattern {config.layers_pattern!r} is set without layers_to_transform; "
            "give the layer indices to adapt too, or drop layers_pattern."
        )


class FtTunerLayer(nn.Module, BaseTunerLayer):
    """A tuner layer with PEFT's merge protocol written once.

    A subclass sets ``method`` (the plugin name, for messages) and implements the maths:
    ``apply_adapter(adapter, x, result)`` (the forward pass), ``merged_params(adapter)`` and ``unmerged_params(adapter)`` return the base layer's parameters after
    merging / unmerging that adapter (name -> fp32 tensor), and ``merge_blocker(adapter)`` says why it cannot
    merge (None when it can).
    """

    method: ClassVar[str] = ""

    def _init_tuner_state(self, base_layer: nn.Module, adapter_name: str) -> None:
        self.base_layer = base_layer
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's output, then each active adapter's :meth:`apply_adapter` in turn (a layer whose adapters
        also act on the input, like bottleneck's series adapters, overrides this)."""
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if self.has_adapter(name):
                result = self.apply_adapter(name, x, result)
        return result

    def apply_adapter(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The layer's output with adapter ``adapter_name`` applied, given its input ``x``."""
        raise NotImplementedError

    def has_adapter(self, adapter_name: str) -> bool:
        """Whether this layer holds ``adapter_name`` (the first of ``adapter_layer_names`` keys the adapters)."""
        return adapter_name in getattr(self, self.adapter_layer_names[0])

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        return None

    def merged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def unmerged_params(self, adapter_name: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if not self.has_adapter(name):
                continue
            reason = self.merge_blocker(name)
            if reason:
                raise FtpluginsError(
                    f"{self.method}: cannot merge adapter {name!r} into {type(base).__name__}: {reason}."
                )
            params = self.merged_params(name)
            if safe_merge and not all(value.isfinite().all() for value in params.values()):
                raise ValueError(
                    f"{self.method}: NaN or inf in the merged weights of adapter {name!r}; the adapter seems to be "
                    "broken (nothing was merged)."
                )
            self._write_base_params(params)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn(f"{self.method}: already unmerged, nothing to do.")
            return
        while self.merged_adapters:
            self._write_base_params(self.unmerged_params(self.merged_adapters.pop()))

    def _write_base_params(self, params: dict[str, torch.Tensor]) -> None:
        base = self.get_base_layer()
        for name, value in params.items():
            param = getattr(base, name)
            param.data = value.to(device=param.device, dtype=param.dtype)


class FtTuner(BaseTuner):
    """A ``BaseTuner`` with the replacement and merge checks every ftplugins tuner shares.

    A subclass sets ``prefix``, ``tuner_layer_cls``, ``method`` and ``merge_hint`` (the fix named when a merge
    is refused), and implements ``_create_new_module``; layers whose ``update_layer`` needs more than
    ``(adapter_name, config)`` override ``_update_layer`` too.
    """

    method: ClassVar[str] = ""
    #: What the tuner adapts, for error messages ("Linear, Conv2d, LayerNorm and RMSNorm modules").
    supported: ClassVar[str] = ""
    merge_hint: ClassVar[str] = "use the adapter unmerged"
    target_module_mapping: dict[str, list[str]] = {}  # defaults come from the model, see default_targets

    # --- what a tuner says about its targets ------------------------------------------------------

    def default_targets(self, peft_config: Any) -> Optional[list[str]]:
        """Full names of the modules to adapt when ``target_modules`` asks for defaults, else None (the user's
        ``target_modules`` stand). Resolved from the model and saved, so an adapter loads onto the same modules."""
        return None

    def supports(self, module: nn.Module) -> bool:
        """Whether the tuner's layer can wrap ``module``."""
        return True

    def check_targets(self, peft_config: Any, matched: list[tuple[str, nn.Module]]) -> None:
        """Checks on all targets together, before any module is replaced (raise to refuse)."""

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        """Defaults resolved from the modules (``modules_to_save``: the classifier head; ``target_modules``:
        :meth:`default_targets` in the selected layers), then every target checked before any is replaced, so
        a refused adapter leaves the model untouched."""
        model = self.model  # BaseTuner hands this hook only the model's config; the defaults need the modules
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = classifier_heads(model, self.method)
        given = peft_config.target_modules
        resolved = self.default_targets(peft_config)
        if resolved is not None:
            peft_config.target_modules = [name for name in resolved if in_selected_layers(peft_config, name)]
        modules = unwrapped_modules(model, see_through_aux=False)
        matched = [(name, module) for name, module in modules if check_target_module_exists(peft_config, name)]
        option = f"--{self.method}_target_modules"
        if not matched:
            raise UnsupportedModelError(
                f"{self.method}: no module of {describe(model)} matches target_modules={given!r} (exclude_modules="
                f"{peft_config.exclude_modules!r}, layers_to_transform={peft_config.layers_to_transform!r}); "
                f"{self.method} adapts {self.supported}. Pass {option} with names from model.named_modules()."
            )
        unsupported = [f"{name} ({type(module).__name__})" for name, module in matched if not self.supports(module)]
        if unsupported:
            raise UnsupportedModelError(
                f"{self.method}: target_modules match modules of {describe(model)} that it cannot adapt: "
                f"{', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}; {self.method} adapts "
                f"{self.supported}. Narrow {option} or add them to --{self.method}_exclude_modules."
            )
        self.check_targets(peft_config, matched)
        return peft_config

    # --- replacing modules and merging ---------------------------------------------------------------

    def _prepare_model(self, peft_config: Any, model: nn.Module) -> None:
        """An adapted model is trained: its bitsandbytes 4-bit layers must pass gradients on every CPU."""
        guard_cpu_4bit_packing(model, training=True)

    def _create_new_module(self, peft_config: Any, adapter_name: str, target: nn.Module, key: str) -> nn.Module:
        raise NotImplementedError

    def _update_layer(self, layer: nn.Module, peft_config: Any, adapter_name: str, key: str) -> None:
        layer.update_layer(adapter_name, peft_config)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        # A model in eval mode must not start dropping adapter inputs: new adapter modules follow the layer's mode.
        if isinstance(target, self.tuner_layer_cls):
            self._update_layer(target, peft_config, adapter_name, current_key)
            target.train(target.training)
            return
        new_module = self._create_new_module(peft_config, adapter_name, target, current_key)
        new_module.train(target.training)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        super()._check_merge_allowed()
        # Check every layer before any is changed, so a refused merge leaves the model as it was.
        blocked = [
            f"{name} ({reason})"
            for name, module in self.model.named_modules()
            if isinstance(module, FtTunerLayer)
            for adapter in module.active_adapters
            if module.has_adapter(adapter) and (reason := module.merge_blocker(adapter))
        ]
        if blocked:
            raise FtpluginsError(
                f"{self.method}: the adapter cannot be merged into {len(blocked)} module(s): {', '.join(blocked[:5])}"
                f"{' ...' if len(blocked) > 5 else ''}. {self.merge_hint}"
            )
