"""``BottleneckConfig``: the PEFT config of the bottleneck adapters. Importing this module registers the
``BOTTLENECK`` PEFT type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ftplugins.peft_types import PeftTypeName, register_peft_type
from ftplugins.tuners import FtTunerConfig

from .model import BottleneckModel
from .options import INIT_WEIGHTS, BottleneckOptions, init_name

BOTTLENECK = PeftTypeName("BOTTLENECK")

#: Config field -> plugin option. The config names follow PEFT's (``target_modules``, ``modules_to_save``);
#: ``adapter_bias`` because PEFT reads a config's ``bias`` as its own bias-training mode.
OPTION_OF_FIELD = {
    "preset": "bottleneck_preset",
    "target_modules": "bottleneck_target_modules",
    "exclude_modules": "bottleneck_exclude_modules",
    "series_side": "bottleneck_series_side",
    "bottleneck_size": "bottleneck_size",
    "reduction_factor": "bottleneck_reduction_factor",
    "activation": "bottleneck_activation",
    "scaling": "bottleneck_scaling",
    "learn_scaling": "bottleneck_learn_scaling",
    "dropout": "bottleneck_dropout",
    "adapter_bias": "bottleneck_bias",
    "block_mode": "bottleneck_block_mode",
    "block_position": "bottleneck_block_position",
    "block_type": "bottleneck_block_type",
    "block_residual": "bottleneck_block_residual",
    "conformer_kernel_size": "bottleneck_conformer_kernel_size",
    "train_norms": "bottleneck_train_norms",
    "modules_to_save": "bottleneck_modules_to_save",
}


def _help(option: str) -> dict:
    return {"help": BottleneckOptions.__dataclass_fields__[option].metadata["help"]}


@dataclass
class BottleneckConfig(FtTunerConfig):
    """Where bottleneck adapters go and what they are. Each field is the plugin option of the same meaning
    (``OPTION_OF_FIELD``); values are checked by the options' rules. ``init_weights`` is ``--bottleneck_init``
    in PEFT's convention (``INIT_WEIGHTS``): True the identity, False LLM-Adapters' random "bert" init,
    "petl_zero" PETL-AST's."""

    preset: str = field(default="llm_adapters_series", metadata=_help("bottleneck_preset"))
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata=_help("bottleneck_target_modules")
    )
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata=_help("bottleneck_exclude_modules"))
    series_side: str = field(default="auto", metadata=_help("bottleneck_series_side"))
    bottleneck_size: int = field(default=256, metadata=_help("bottleneck_size"))
    reduction_factor: float = field(default=0.0, metadata=_help("bottleneck_reduction_factor"))
    activation: str = field(default="auto", metadata=_help("bottleneck_activation"))
    scaling: float = field(default=1.0, metadata=_help("bottleneck_scaling"))
    learn_scaling: bool = field(default=False, metadata=_help("bottleneck_learn_scaling"))
    dropout: float = field(default=0.0, metadata=_help("bottleneck_dropout"))
    adapter_bias: bool = field(default=False, metadata=_help("bottleneck_bias"))
    block_mode: str = field(default="parallel", metadata=_help("bottleneck_block_mode"))
    block_position: str = field(default="auto", metadata=_help("bottleneck_block_position"))
    block_type: str = field(default="bottleneck", metadata=_help("bottleneck_block_type"))
    block_residual: bool = field(default=True, metadata=_help("bottleneck_block_residual"))
    conformer_kernel_size: int = field(default=31, metadata=_help("bottleneck_conformer_kernel_size"))
    train_norms: bool = field(default=True, metadata=_help("bottleneck_train_norms"))
    modules_to_save: Optional[list[str]] = field(default=None, metadata=_help("bottleneck_modules_to_save"))
    layer_roles: Optional[dict[str, dict[str, Any]]] = field(
        default=None,
        metadata={
            "help": "Filled when the adapter is applied: full module name -> what its wrapper does (placement; for "
            "block adapters also sublayer, entry/exit part, block and width). Saved, so a saved adapter always "
            "loads onto the same modules with the same placements."
        },
    )

    init_aliases = INIT_WEIGHTS
    named_inits = ("petl_zero",)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = BOTTLENECK
        # The options' checks, single values and combinations (errors name the plugin options). Once the adapter
        # was applied, target_modules holds the resolved module names of layer_roles, whatever the preset.
        values = {option: getattr(self, name) for name, option in OPTION_OF_FIELD.items()}
        values["bottleneck_init"] = init_name(self.init_weights)
        if self.layer_roles is not None:
            values["bottleneck_target_modules"] = None
        BottleneckOptions(**values)

    @classmethod
    def from_options(cls, options: BottleneckOptions) -> BottleneckConfig:
        values = {}
        for name, option in OPTION_OF_FIELD.items():
            value = getattr(options, option)
            # PEFT fills list fields in place when it resolves defaults; keep the user's options untouched.
            values[name] = list(value) if isinstance(value, list) else value
        return cls(**values, init_weights=INIT_WEIGHTS[options.bottleneck_init])


register_peft_type(BOTTLENECK, BottleneckConfig, BottleneckModel, prefix=BottleneckModel.prefix)
