"""Packing many shots of one task into one training sequence, with a label on every answer.

A sequence is ``[x_1 y_1 x_2 y_2 ... x_k y_k]``: each shot tokenized exactly as ``SFTTrainer``
tokenizes a prompt/completion example (:mod:`ftplugins.objectives.sft_tokens`), so a one-shot
sequence is the SFT row itself. Labels are the answer tokens (``y_i``, EOS / end of turn included)
and -100 on prompts; with ``loss="last"`` only ``y_k`` keeps its labels.

* Standard text: the shots' token lists are concatenated; the EOS closing each answer is the only
  separator, and special tokens the tokenizer puts in front of every text (BOS) are kept once, at
  the start of the sequence.
* Conversational: the shots become one multi-turn conversation ``user x_1, assistant y_1, ...``
  rendered with the chat template; answer spans are found as TRL finds a completion (render up to
  the generation prompt, render with the answer, take the difference), which needs a template whose
  rendering of a conversation is a prefix of the rendering of its continuation (checked; an error
  names the shot). System messages of shots after the first are dropped (one system prompt per
  conversation). Rendering is repeated per added shot: O(k^2) tokenization per sequence.

Shots are added greedily in (seeded, shuffled) order while the sequence stays within
``max_length`` and under the shot limit; an example is never split across sequences. An example
longer than ``max_length`` on its own becomes a one-shot sequence truncated as ``SFTTrainer`` would
(dropped if no answer token survives).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import DatasetColumnsError, FtpluginsError
from ftplugins.objectives.sft_tokens import (
    IGNORE_INDEX,
    TextFormat,
    common_prefix_length,
    is_conversational,
    tokenize_prompt_completion,
    truncate,
)

logger = logging.getLogger("ftplugins.many_icl")

#: Metadata columns of a packed row (dropped by the trainer before collation).
TASK_COLUMN, ROWS_COLUMN = "many_icl_task", "many_icl_rows"


@dataclass
class Packed:
    """One sequence under construction: token ids, answer spans ``[start, end)``, source rows."""

    ids: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    messages: list[dict] | None = None  # conversational: the conversation rendered into ``ids``


def pack_many_shot(
    dataset: Any,
    fmt: TextFormat,
    *,
    max_length: int | None,
    shots: int = 0,
    loss: str = "all",
    task_column: str = "",
    shuffle: bool = True,
    seed: int = 0,
    split: str = "train",
    truncation_mode: str = "keep_start",
) -> Any:
    """Pre-tokenized many-shot rows (``input_ids``, ``labels``, task and source-row columns) from ``dataset``."""
    from datasets import Dataset

    check_columns(dataset, task_column)
    rows = dataset.to_list()
    conversational = is_conversational(rows[0]["prompt"]) if rows else False
    builder = ConversationBuilder(fmt) if conversational else TextBuilder(fmt)
    out: dict[str, list] = {"input_ids": [], "labels": [], TASK_COLUMN: [], ROWS_COLUMN: []}
    dropped = 0
    sequences: list[tuple[str, Packed]] = []
    for task, indices in group_by_task(rows, task_column).items():
        if shuffle:
            random.Random(f"many_icl:{seed}:{split}:{task}").shuffle(indices)
        sequences.extend((task, p) for p in pack_task(indices, rows, builder, max_length=max_length, shots=shots))
    if shuffle:
        random.Random(f"many_icl:{seed}:{split}").shuffle(sequences)
    for task, seq in sequences:
        labels = answer_labels(seq, loss)
        ids, labels = truncate(seq.ids, labels, max_length, truncation_mode)  # only single over-long shots
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out[TASK_COLUMN].append(task)
        out[ROWS_COLUMN].append(seq.rows)
    if dropped:
        logger.warning("many_icl: %d over-long example(s) of the %s split kept no answer token after truncation "
                       "to max_length=%s and were dropped.", dropped, split, max_length)
    if not out["input_ids"]:
        raise FtpluginsError(f"many_icl: the {split} split packed into no sequence (empty dataset?).")
    return Dataset.from_dict(out)


def check_columns(dataset: Any, task_column: str) -> None:
    names = set(dataset.column_names)
    if not {"prompt", "completion"} <= names:
        raise DatasetColumnsError(
            f"many_icl packs prompt/completion examples; the dataset has columns ({', '.join(sorted(names))}). "
            "Convert 'text' / 'messages' rows to prompt/completion (standard or conversational) first."
        )
    if task_column and task_column not in names:
        raise DatasetColumnsError(
            f"many_icl_task_column={task_column!r} is not a column of the dataset ({', '.join(sorted(names))}); "
            "name the task column, or leave it empty for a single task."
        )


def group_by_task(rows: list[dict], task_column: str) -> dict[str, list[int]]:
    """Row indices per task, tasks in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row[task_column]) if task_column else "", []).append(i)
    return groups


def pack_task(
    indices: list[int], rows: list[dict], builder: Any, *, max_length: int | None, shots: int
) -> list[Packed]:
    """Greedy packing of one task's examples, in order; a shot that does not fit starts the next sequence."""
    sequences: list[Packed] = []
    current: Packed | None = None
    for i in indices:
        if current is not None and (shots == 0 or len(current.rows) < shots):
            candidate = builder.extend(current, i, rows[i])
            if max_length is None or len(candidate.ids) <= max_length:
                current = candidate
                continue
        if current is not None:
            sequences.append(current)
        current = builder.first(i, rows[i])
    if current is not None:
        sequences.append(current)
    return sequences


def answer_labels(seq: Packed, loss: str) -> list[int]:
    """-100 everywhere but the answer spans (all of them, or the last one)."""
    labels = [IGNORE_INDEX] * len(seq.ids)
    for start, end in seq.spans if loss == "all" else seq.spans[-1:]:
        labels[start:end] = seq.ids[start:end]
    return labels


class TextBuilder:
    """Standard text shots: each tokenized as SFT does, concatenated."""

    def __init__(self, fmt: TextFormat):
        self.fmt = fmt
        self._cache: dict[int, tuple[list[int], int]] = {}
        # Special tokens the tokenizer puts before every text (a BOS): kept once, at the sequence start.
        self.lead = common_prefix_length(fmt.encode_text("a"), fmt.encode_text("b"))

    def _shot(self, i: int, example: dict) -> tuple[list[int], int]:
        if i not in self._cache:
            if not isinstance(example["prompt"], str):
                raise DatasetColumnsError(f"row {i}: mixes conversational and standard prompts; use one format.")
            self._cache[i] = tokenize_prompt_completion(self.fmt, example)
        return self._cache[i]

    def first(self, i: int, example: dict) -> Packed:
        ids, start = self._shot(i, example)
        return Packed(ids=list(ids), spans=[(start, len(ids))], rows=[i])

    def extend(self, seq: Packed, i: int, example: dict) -> Packed:
        ids, start = self._shot(i, example)
        offset = len(seq.ids) - self.lead
        return Packed(ids=seq.ids + ids[self.lead :], spans=[*seq.spans, (offset + start, offset + len(ids))],
                      rows=[*seq.rows, i])


class ConversationBuilder:
    """Conversational shots: one multi-turn conversation, answer spans from incremental renders."""

    def __init__(self, fmt: TextFormat):
        self.fmt = fmt

    def first(self, i: int, example: dict) -> Packed:
        self._check(i, example)
        ids, start = tokenize_prompt_completion(self.fmt, example)
        return Packed(ids=ids, spans=[(start, len(ids))], rows=[i],
                      messages=list(example["prompt"]) + list(example["completion"]))

    def extend(self, seq: Packed, i: int, example: dict) -> Packed:
        self._check(i, example)
        prompt = [m for m in example["prompt"] if m.get("role") != "system"]
        before = self.fmt.render(seq.messages + prompt, add_generation_prompt=True)
        messages = seq.messages + prompt + list(example["completion"])
        ids = self.fmt.render(messages)
        if ids[: len(seq.ids)] != seq.ids:
            raise FtpluginsError(
                f"many_icl: the chat template renders a conversation differently once more turns follow (at row {i}), "
                "so answer spans cannot be located; use a template whose renderings are prefixes of each other, "
                "or standard (text) prompt/completion rows."
            )
        start = common_prefix_length(before, ids)
        return Packed(ids=ids, spans=[*seq.spans, (start, len(ids))], rows=[*seq.rows, i], messages=messages)

    @staticmethod
    def _check(i: int, example: dict) -> None:
        if not (is_conversational(example["prompt"]) and is_conversational(example["completion"])):
            raise DatasetColumnsError(f"row {i}: mixes conversational and standard prompt/completion; use one format.")

