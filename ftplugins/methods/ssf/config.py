"""``SSFConfig``: the PEFT config of SSF. Importing this module registers the ``SSF`` PEFT type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from ftplugins.peft_types import PeftTypeName, register_peft_type

from .model import SSFModel
from .options import SSF_INITS

SSF = PeftTypeName("SSF")


@dataclass
class SSFConfig(PeftConfig):
    """Which modules get a per-channel scale and shift, and how they start.

    Field meanings match the ``ssf_*`` options of the plugin (see ``options.py``).
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names, name suffixes or a regex to adapt. None: every Linear, LayerNorm, RMSNorm and "
            "Conv2d module except the output head (resolved when the adapter is applied)."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names, name suffixes or a regex not to adapt."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules trained in full and saved. None: the classifier head of classification models."},
    )
    init: str = field(default="identity", metadata={"help": "identity (scale 1, shift 0) or normal (paper's init)."})
    shift_without_bias: bool = field(
        default=False, metadata={"help": "Also shift modules without a bias (the adapter can then not be merged)."}
    )
    # TRL reads and may set this (new tokens); PEFT then trains those embedding rows.
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None, metadata={"help": "Token ids whose embedding rows are trained too (set by TRL for new tokens)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = SSF
        if self.init not in SSF_INITS:
            raise ValueError(f"SSFConfig.init {self.init!r}: expected one of {', '.join(SSF_INITS)}")


register_peft_type(SSF, SSFConfig, SSFModel, prefix=SSFModel.prefix)
