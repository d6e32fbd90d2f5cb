"""The CLS-RL prompt: the input, the question, the class names listed (shuffled per example), the answer format.

The paper's prompt is "What type of object is in the photo? Please choose one from list [ ... ]" with the class names
shuffled; the reference appends the thinking instruction (CLS-RL) or "Please directly output the answer."
(No-Thinking-CLS-RL). Shuffling is seeded per example index, so a dataset always gives the same prompts.
"""

from __future__ import annotations

import random
from typing import Any

from ftplugins.errors import FtpluginsError

THINK = "Please output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
NO_THINK = "Please directly output the answer."
NAMED = "_cls_rl_label_name"


def prompt_text(text: str, question: str, names: list[str], mode: str) -> str:
    listed = ", ".join(names)
    return f"{text}\n{question} Please choose one from list [{listed}]. {THINK if mode == 'think' else NO_THINK}"


def label_names(dataset: Any, opts: Any) -> list[str]:
    """The class names: the option, else the label column's ``ClassLabel`` names, else its distinct values sorted."""
    if opts.cls_rl_labels:
        return list(opts.cls_rl_labels)
    feature = dataset.features.get(opts.cls_rl_label_column)
    if getattr(feature, "names", None):
        return list(feature.names)
    names = sorted({str(v).strip() for v in dataset[opts.cls_rl_label_column]})
    if len(names) < 2:
        raise FtpluginsError(
            f"cls_rl: the label column {opts.cls_rl_label_column!r} has {len(names)} distinct value(s) {names}; a "
            "classification task needs at least two classes: pass them with cls_rl_labels."
        )
    return names


def label_name(value: Any, names: list[str], index: int, column: str) -> str:
    """``value`` as a class name: a name from ``names`` (exact, after stripping) or an index into them."""
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if 0 <= value < len(names):
            return names[value]
    elif str(value).strip() in names:
        return str(value).strip()
    raise FtpluginsError(
        f"cls_rl: example {index} has {column}={value!r}, which is not one of the class names {names} (nor an index "
        "into them); fix the label or list every class in cls_rl_labels."
    )


def build_prompts(dataset: Any, opts: Any, conversational: bool) -> Any:
    """``dataset`` with a ``prompt`` column listing the class names and the label column as class names."""
    label_column, text_column = opts.cls_rl_label_column, opts.cls_rl_text_column
    columns = list(dataset.column_names)
    if label_column not in columns:
        raise FtpluginsError(
            f"cls_rl: the dataset has no label column {label_column!r} (columns: {columns}); the rewards compare each "
            "completion with it: set cls_rl_label_column to the column with the class names."
        )
    if text_column and text_column not in columns:
        raise FtpluginsError(
            f"cls_rl: the dataset has no text column {text_column!r} (columns: {columns}); set cls_rl_text_column to "
            "the input column, or cls_rl_text_column='' to keep the dataset's own 'prompt' column."
        )
    if not text_column and "prompt" not in columns:
        raise FtpluginsError(
            f"cls_rl: cls_rl_text_column='' keeps the dataset's 'prompt' column, and there is none (columns: "
            f"{columns}); name the input column in cls_rl_text_column so cls_rl builds the prompts."
        )
    names = label_names(dataset, opts)

    def convert(example: dict[str, Any], index: int) -> dict[str, Any]:
        row = {NAMED: label_name(example[label_column], names, index, label_column)}
        if text_column:
            shown = list(names)
            if opts.cls_rl_shuffle:
                random.Random(f"{opts.cls_rl_seed}:{index}").shuffle(shown)
            text = prompt_text(str(example[text_column]), opts.cls_rl_question, shown, opts.cls_rl_mode)
            row["prompt"] = [{"role": "user", "content": text}] if conversational else text
        return row

    # The names go to a new column that then takes the label column's place: written into a ClassLabel column,
    # datasets would encode them back to integers.
    drop = [label_column, *(["prompt"] if text_column and "prompt" in columns else [])]
    built = dataset.map(convert, with_indices=True, remove_columns=drop, desc="cls_rl prompts")
    return built.rename_column(NAMED, label_column)
