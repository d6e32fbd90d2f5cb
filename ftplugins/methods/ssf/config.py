"""``SSFConfig``: the PEFT config of SSF. Importing this module registers the ``SSF`` PEFT type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ftplugins.peft_types import PeftTypeName, register_peft_type
from ftplugins.tuners import FtTunerConfig

from .model import SSFModel

SSF = PeftTypeName("SSF")


@dataclass
class SSFConfig(FtTunerConfig):
    """Which modules get a per-channel scale and shift, and how they start.

    Field meanings match the ``ssf_*`` options of the plugin (see ``options.py``); ``init_weights`` True is the
    identity (scale 1, shift 0), False the reference code's init (scale ~ N(1, 0.02), shift ~ N(0, 0.02)).
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names, name suffixes or a regex to adapt. None: every Linear, LayerNorm, RMSNorm and "
            "Conv2d module except the output head (resolved when the adapter is applied)."
        },
    )
    shift_without_bias: bool = field(
        default=False, metadata={"help": "Also shift modules without a bias (the adapter can then not be merged)."}
    )

    init_aliases = {"identity": True, "normal": False}

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = SSF


register_peft_type(SSF, SSFConfig, SSFModel, prefix=SSFModel.prefix)
