"""Safety-recovery augmentation (Qi et al., arXiv:2406.05946, section 3.2) as a dataset transform.

Dataset format - one table holding both kinds of rows:

======================  =======================================================================
``prompt``              the instruction: a string, or a list of messages (conversational)
``harmful_response``    the harmful answer h (string) on safety rows; null on utility rows
``refusal``             the refusal r (string) on safety rows; null on utility rows
``completion``          the answer of a utility row (string / list of messages); null on safety rows
======================  =======================================================================

(conversational rows may also give h and r as a one-message assistant list). A **safety row**
becomes, with probability ``p`` (0.5), ``prompt + h[:k] -> r`` with k drawn uniformly from
1..min(100, |h|), |h| counted in tokens as h is tokenized after the prompt; otherwise
``prompt -> r``. The loss is on r only (its EOS / end of turn included): the harmful prefix sits
on the prompt side. Spliced at the token level, as the reference does: the prompt, then the first k
tokens of h, then r tokenized as the completion of the prompt, all in one assistant turn. A
**utility row** is plain SFT on ``prompt -> completion`` (the paper's utility anchor).

The output rows are pre-tokenized like ``SFTTrainer``'s own (``input_ids``, ``labels``), plus
``deep_align_prefix_tokens``: k, 0 for a plain refusal, -1 for a utility row.

Deliberate differences from the reference: the prefix is drawn once per row (from a generator
seeded with the run's seed, the split and the row index; deterministic and resumable) where the
reference draws per batch, so a row keeps its prefix across epochs; and utility rows are mixed
into the same dataset (their share is the dataset's) instead of a separate anchor batch per step.
"""

from __future__ import annotations

import random
from typing import Any

from ftplugins.errors import DatasetColumnsError
from ftplugins.objectives.sft_tokens import (
    IGNORE_INDEX,
    TextFormat,
    row_template_kwargs,
    common_prefix_length,
    completion_labels,
    is_conversational,
    tokenize_prompt_completion,
)

PREFIX_COLUMN = "deep_align_prefix_tokens"


def safety_recovery_dataset(
    dataset: Any,
    fmt: TextFormat,
    *,
    prob: float = 0.5,
    max_prefix: int = 100,
    harmful_column: str = "harmful_response",
    refusal_column: str = "refusal",
    seed: int = 0,
    split: str = "train",
    completion_only_loss: bool = True,
) -> Any:
    """The augmented, pre-tokenized dataset (``input_ids``, ``labels``, :data:`PREFIX_COLUMN`)."""
    from datasets import Dataset

    names = set(dataset.column_names)
    missing = {"prompt", harmful_column, refusal_column} - names
    if missing:
        raise DatasetColumnsError(
            f"deep_align_augment=True needs columns prompt, {harmful_column}, {refusal_column} (and completion for "
            f"utility rows); the {split} dataset lacks {', '.join(sorted(missing))} (it has "
            f"{', '.join(sorted(names))}). Set deep_align_harmful_column / deep_align_refusal_column, or turn the "
            "augmentation off."
        )
    out: dict[str, list] = {"input_ids": [], "labels": [], PREFIX_COLUMN: []}
    for i, row in enumerate(dataset.to_list()):
        harmful, refusal = row.get(harmful_column), row.get(refusal_column)
        if harmful is not None and refusal is not None:
            rng = random.Random(f"deep_align:{seed}:{split}:{i}")
            ids, labels, k = safety_row(fmt, row, _content(harmful), _content(refusal), rng, prob, max_prefix)
        elif row.get("completion") is not None:
            ids, start = tokenize_prompt_completion(fmt, row)
            ids, labels, k = ids, completion_labels(ids, start, completion_only_loss), -1
        else:
            raise DatasetColumnsError(
                f"row {i} of the {split} dataset has neither {harmful_column} + {refusal_column} (a safety row) nor "
                "completion (a utility row)."
            )
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out[PREFIX_COLUMN].append(k)
    return Dataset.from_dict(out)


def safety_row(
    fmt: TextFormat, row: dict, harmful: str, refusal: str, rng: random.Random, prob: float, max_prefix: int
) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, k) of one safety row; the loss covers the refusal only."""
    conversational = is_conversational(row["prompt"])
    completion = [{"role": "assistant", "content": refusal}] if conversational else refusal
    ids, start = tokenize_prompt_completion(fmt, {**row, "completion": completion})
    k = 0
    if rng.random() < prob:
        harmful_ids = harmful_tokens(fmt, row, harmful)
        if harmful_ids:
            k = rng.randint(1, min(max_prefix, len(harmful_ids)))
            ids = ids[:start] + harmful_ids[:k] + ids[start:]
            start += k
    return ids, [IGNORE_INDEX] * start + ids[start:], k


def harmful_tokens(fmt: TextFormat, row: dict, harmful: str) -> list[int]:
    """The tokens of h as they follow the prompt (an open assistant turn for conversational rows)."""
    prompt = row["prompt"]
    if is_conversational(prompt):
        kwargs = row_template_kwargs(row)
        before = fmt.render(prompt, add_generation_prompt=True, **kwargs)
        ids = fmt.render([*prompt, {"role": "assistant", "content": harmful}], continue_final_message=True, **kwargs)
    else:
        before, ids = fmt.encode_text(prompt), fmt.encode_text(prompt + harmful)
    return ids[common_prefix_length(before, ids) :]


def _content(value: Any) -> str:
    """A response given as a string or as a one-message assistant list."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or "content" not in value[0]:
            raise DatasetColumnsError(f"expected a response string or one assistant message, got {value!r}")
        return value[0]["content"]
    return value
