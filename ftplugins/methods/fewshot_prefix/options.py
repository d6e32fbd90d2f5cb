"""Options of few-shot-prefixed SFT (label quantity/quality paper, EleutherAI/scalable-elicitation).

The paper varies k; the default k=4 is ours (a small prompt that fits the tiny recipes' max_length).
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field
from typing import Optional

from ftplugins.options import check_range


@dataclass
class FewshotPrefixOptions:
    fewshot_prefix_k: int = field(
        default=4,
        metadata={
            "help": "In-context examples put in front of every train and eval prompt, drawn from the pool "
            "(reshuffled per row). 0 is plain SFT (the dataset is left untouched, no pool is held out)."
        },
    )
    fewshot_prefix_pool_size: int = field(
        default=32,
        metadata={
            "help": "Rows of the train split held out (seeded draw) as the in-context pool; they, and any train "
            "row equal to a pool example, are never training targets. Ignored when fewshot_prefix_pool_path is set."
        },
    )
    fewshot_prefix_pool_path: str = field(
        default="",
        metadata={
            "help": "A separate pool: a JSON/JSONL file or a dataset folder (save_to_disk or one datasets can "
            "load) with the same prompt/completion columns. Empty: hold out fewshot_prefix_pool_size train rows."
        },
    )
    fewshot_prefix_separator: str = field(
        default="\n\n",
        metadata={
            "help": "Text between in-context examples and between the last example and the row's prompt (the "
            "paper joins examples with blank lines). Each example is its prompt + completion, as SFT renders it."
        },
    )

    fewshot_prefix_lead: str = field(
        default="",
        metadata={
            "help": "Text before the first in-context example: an instruction, or the task tag a model was trained "
            "to read examples under (text prompts only; in a conversation use a system message)."
        },
    )
    fewshot_prefix_query_separator: Optional[str] = field(
        default=None,
        metadata={
            "help": "Text between the last in-context example and the row's prompt, where it differs from "
            "fewshot_prefix_separator (e.g. 'Now:' or a marker the model knows). Unset: fewshot_prefix_separator. "
            "Text prompts only."
        },
    )

    def __post_init__(self):
        check_range("fewshot_prefix_k", self.fewshot_prefix_k, 0, 1_000_000)
        check_range("fewshot_prefix_pool_size", self.fewshot_prefix_pool_size, 0, 1_000_000_000)
        if self.fewshot_prefix_k > 0 and not self.fewshot_prefix_pool_path and self.fewshot_prefix_pool_size < \
                self.fewshot_prefix_k:
            raise ValueError(
                f"--fewshot_prefix_pool_size {self.fewshot_prefix_pool_size!r}: the pool must hold at least "
                f"fewshot_prefix_k={self.fewshot_prefix_k} examples (k distinct examples per prompt)"
            )
