"""Rows as token ids for features computed with a causal LM (response embeddings, losses, gradients).

A ``prompt``/``completion`` row is tokenized as TRL's ``SFTTrainer`` does (:mod:`ftplugins.objectives.sft_tokens`)
and its response is the completion; a ``text`` or ``messages`` row is all response.
"""

from __future__ import annotations

from typing import Any

from .source import as_text


def model_columns(columns: list[str], text_field: str) -> list[str]:
    """The columns a model-based feature reads: prompt + completion when the pool has both."""
    return ["prompt", "completion"] if {"prompt", "completion"} <= set(columns) else [text_field]


def row_tokens(tokenizer: Any, row: dict[str, Any], max_length: int) -> tuple[list[int], int]:
    """``(input_ids, response_start)``, truncated to ``max_length`` (keeping at least one response token)."""
    if "prompt" in row and "completion" in row:
        from ftplugins.objectives.sft_tokens import TextFormat, tokenize_prompt_completion

        fmt = TextFormat(tokenizer=tokenizer, eos_token=tokenizer.eos_token or "")
        ids, start = tokenize_prompt_completion(fmt, row)
    else:
        (value,) = row.values()
        ids, start = list(tokenizer(text=as_text(value))["input_ids"]), 0
    ids = ids[:max_length]
    return ids, min(start, max(len(ids) - 1, 0))


def pad_batch(tokenized: list[tuple[list[int], int]], pad_id: int):
    """``input_ids``, ``attention_mask`` and ``response_mask`` tensors, right-padded."""
    import torch

    width = max(len(ids) for ids, _ in tokenized)
    input_ids = torch.full((len(tokenized), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(tokenized), width), dtype=torch.long)
    response = torch.zeros((len(tokenized), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(tokenized):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        response[row, start : len(ids)] = True
    return input_ids, attention, response


def batch_rows(batch: dict[str, list]) -> list[dict[str, Any]]:
    """A column batch as row dicts (one batch only, never the pool)."""
    columns = list(batch)
    return [dict(zip(columns, values, strict=True)) for values in zip(*(batch[c] for c in columns), strict=True)]
