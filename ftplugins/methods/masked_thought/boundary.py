"""Masked Thought needs to know where the response starts.

MFT corrupts the inputs of the *response* (the reasoning steps), never the question (paper §3). The collator takes
the response to be the tokens that carry a label, which TRL gets right for prompt/completion rows and for messages
with ``assistant_only_loss=True``. When every token carries a label — plain ``text`` rows, ``completion_only_loss=
False``, messages without ``assistant_only_loss`` — nothing tells the prompt from the response, and masking would
silently corrupt the question as well. We refuse that run rather than guess a boundary.
"""

from __future__ import annotations

from typing import Any

from ftplugins.errors import DatasetColumnsError

IGNORE_INDEX = -100


def require_response_boundary(trainer: Any) -> None:
    """Refuse a training set whose first example has a label on every token (no prompt/response boundary)."""
    dataset = getattr(trainer, "train_dataset", None)
    example = _first(dataset)
    if example is None:
        return
    batch = trainer.data_collator([example])
    labels = batch.get("labels")
    if labels is None:
        return
    labels = labels[0]
    attention = batch.get("attention_mask")
    if attention is not None:
        labels = labels[attention[0].bool()]
    if labels.numel() > 1 and bool((labels != IGNORE_INDEX).all()):
        columns = ", ".join(getattr(dataset, "column_names", None) or [])
        raise DatasetColumnsError(
            "masked_thought masks the inputs of the response (the tokens that carry a label), and every token of the "
            f"first training example carries one (columns: {columns or 'unknown'}): nothing tells the prompt from the "
            "response, so the prompt would be masked too. Give prompt/completion rows (with completion_only_loss "
            "unset or true), or messages with assistant_only_loss=true; a 'text' column has no prompt."
        )


def _first(dataset: Any) -> Any:
    if dataset is None:
        return None
    try:
        return dataset[0] if hasattr(dataset, "__len__") and len(dataset) else next(iter(dataset), None)
    except (TypeError, KeyError, IndexError):
        return None
