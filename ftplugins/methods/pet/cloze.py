"""Filling the patterns: every example once per pattern, with m mask tokens where ``{mask}`` stands."""

from __future__ import annotations

from typing import Any

from ftplugins.errors import FtpluginsError

from .verbalizer import Verbalizer

PATTERN_COLUMN = "pet_pattern"


def fill(pattern: str, text: str, mask_token: str, masks: int) -> str:
    return pattern.replace("{mask}", " ".join([mask_token] * masks)).replace("{text}", text)


def encode(dataset: Any, opts: Any, tokenizer: Any, verbalizer: Verbalizer) -> Any:
    """Tokenized cloze rows (``input_ids``, ``attention_mask``, ..., ``labels`` = class index, ``pet_pattern``)."""
    text_column, label_column = opts.pet_text_column, opts.pet_label_column
    columns = list(dataset.column_names)
    for column, option in ((text_column, "pet_text_column"), (label_column, "pet_label_column")):
        if column not in columns:
            raise FtpluginsError(f"pet: the dataset has no column {column!r} (columns: {columns}); set {option} to "
                                 "the right column.")
    if len(dataset) == 0:
        raise FtpluginsError("pet: the dataset is empty; PET needs labelled examples.")
    mask_token = tokenizer.mask_token
    if mask_token is None:
        raise FtpluginsError(f"pet: the tokenizer {type(tokenizer).__name__} has no mask token; PET needs a masked LM.")

    def rows(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {}
        for text, label, row in zip(batch[text_column], batch[label_column], indices):
            target = verbalizer.index(label, row, label_column)
            for p, pattern in enumerate(opts.pet_patterns):
                encoded = tokenizer(fill(pattern, str(text), mask_token, verbalizer.masks), truncation=True,
                                    max_length=opts.pet_max_length)
                if encoded["input_ids"].count(tokenizer.mask_token_id) != verbalizer.masks:
                    raise FtpluginsError(
                        f"pet: example {row} in pattern {pattern!r} does not keep its {verbalizer.masks} mask "
                        f"token(s) within pet_max_length={opts.pet_max_length}; raise pet_max_length or put "
                        "{mask} before {text} in the pattern."
                    )
                for key, value in encoded.items():
                    out.setdefault(key, []).append(value)
                out.setdefault("labels", []).append(target)
                out.setdefault(PATTERN_COLUMN, []).append(p)
        return out

    return dataset.map(rows, batched=True, with_indices=True, remove_columns=columns, desc="pet patterns")
