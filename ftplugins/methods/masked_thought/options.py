"""Options of Masked Thought (MFT).

Defaults follow the GSM8K trainer of the reference repository (ChangyuChen347/MaskedThought):
p_max 0.4 reached after two thirds of training, random-token replacement. The MetaMath script of
the same repository uses a ``<mask>`` token, p = 0.2 and optionally hides masked tokens from
attention; those are the other settings below.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

VARIANTS = ("random", "mask_token")


@dataclass
class MaskedThoughtOptions:
    masked_thought_ratio: float = field(
        default=0.4,
        metadata={
            "help": "Masking probability p_max of each response (chain-of-thought) input token, in [0, 1]. "
            "0 trains exactly like plain SFT."
        },
    )
    masked_thought_variant: str = field(
        default="random",
        metadata={
            "help": "What replaces a masked input token: 'random' (a uniformly random vocabulary id, the paper's "
            "GSM8K setting) or 'mask_token' (the tokenizer's mask token, added as '<mask>' with a mean-initialised "
            "embedding when missing; the MetaMath setting)."
        },
    )
    masked_thought_warmup: float = field(
        default=2 / 3,
        metadata={
            "help": "Fraction of the optimizer steps over which p ramps linearly from 0 to masked_thought_ratio; "
            "0 keeps p constant from the first step."
        },
    )
    masked_thought_drop_attention: bool = field(
        default=False,
        metadata={"help": "Also zero the attention mask at masked positions, so no token attends to them (MetaMath)."},
    )

    def __post_init__(self):
        check_range("masked_thought_ratio", self.masked_thought_ratio, 0.0, 1.0)
        check_choice("masked_thought_variant", self.masked_thought_variant, VARIANTS)
        check_range("masked_thought_warmup", self.masked_thought_warmup, 0.0, 1.0)
