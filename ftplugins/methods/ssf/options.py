"""Options of the ``ssf`` plugin (pure dataclasses: importing this module imports no torch)."""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field

from ftplugins.options import check_choice

SSF_INITS = ("identity", "normal")


@dataclass
class SSFOptions:
    ssf_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (or name suffixes) to scale and shift. Default: every Linear, LayerNorm, RMSNorm "
            "and Conv2d module except the output head."
        },
    )
    ssf_exclude_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names (or name suffixes) to leave untouched, e.g. the patch embedding."},
    )
    ssf_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter. Default: the classifier head of sequence / "
            "image classification models, nothing otherwise. Pass an empty list for none."
        },
    )
    ssf_init: str = field(
        default="identity",
        metadata={
            "help": "Initial scale and shift. identity: scale 1, shift 0, so the adapted model starts exactly at the "
            "base model. normal: scale ~ N(1, 0.02), shift ~ N(0, 0.02) as in the reference code (for reproducing "
            "the paper only; the model no longer starts at the base model). In the PEFT config: init_weights "
            "True / False."
        },
    )
    ssf_shift_without_bias: bool = field(
        default=False,
        metadata={
            "help": "Also learn a shift on modules that have no bias (Llama's projections, RMSNorm). Off by default "
            "because such a shift cannot be merged into the base weights; with it on, merge_and_unload() refuses."
        },
    )

    def __post_init__(self):
        check_choice("ssf_init", self.ssf_init, SSF_INITS)
