"""``BlockLoraConfig``: the PEFT config of Block-LoRA. Importing this module registers the ``BLOCK_LORA`` type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ftplugins.peft_types import PeftTypeName, register_peft_type
from ftplugins.tuners import FtTunerConfig

from .model import BlockLoraModel

BLOCK_LORA = PeftTypeName("BLOCK_LORA")


@dataclass
class BlockLoraConfig(FtTunerConfig):
    """Where the update ΔW = (alpha/r)·B·[A*, ..., A*] goes and its shape.

    Field meanings match the ``block_lora_*`` options of the plugin (see ``options.py``); ``init_weights`` True
    is LoRA's init (B = 0: the identity), False a random B (a non-identity update, for tests).
    """

    num_blocks: int = field(
        default=8, metadata={"help": "n: input blocks sharing one down-projection A*; d_in must be divisible by n."}
    )
    r: int = field(default=2, metadata={"help": "Rank of the update."})
    alpha: Optional[float] = field(default=None,
                                   metadata={"help": "The update is scaled by alpha / r (default r: scale 1)."})
    dropout: float = field(default=0.25, metadata={"help": "Dropout on the adapter's input."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names, name suffixes or a regex to adapt, or 'all-linear'. None: the attention q/k/v "
            "projections (resolved when the adapter is applied)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = BLOCK_LORA
        for name in ("num_blocks", "r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockLoraConfig.{name} {value!r}: expected an integer >= 1")
        if self.alpha is None:
            from .options import default_alpha

            self.alpha = default_alpha(self.r)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"BlockLoraConfig.dropout {self.dropout!r}: expected a value in [0, 1)")


register_peft_type(BLOCK_LORA, BlockLoraConfig, BlockLoraModel, prefix=BlockLoraModel.prefix)
