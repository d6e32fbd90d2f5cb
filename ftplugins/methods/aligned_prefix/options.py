"""Options of the aligned-model prefix defence (NOICE paper, jlkazdan/NOICE).

The defaults are the paper's: the aligned model writes the first 15 response tokens.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field


@dataclass
class AlignedPrefixOptions:
    aligned_prefix_k: int = field(
        default=15,
        metadata={
            "help": "Number of response tokens the aligned model writes before the fine-tuned model continues "
            "(the NOICE paper's k=15). 0 is plain decoding with the fine-tuned model."
        },
    )
    aligned_prefix_forced: str = field(
        default="",
        metadata={
            "help": "A fixed response prefix (e.g. \"I'm sorry, I cannot\") forced in place of the aligned model's "
            "k tokens (the paper's forced-prefix variant). Empty: the aligned model writes the prefix."
        },
    )

    def __post_init__(self):
        if self.aligned_prefix_k < 0:
            raise ValueError(f"--aligned_prefix_k {self.aligned_prefix_k!r}: expected a count >= 0")
