"""The dataset columns each kind of trainer needs, checked before the trainer tokenizes.

TRL's own messages for a wrong dataset surface deep inside tokenization; this check names the
columns found, the ones expected, and where the formats are documented.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import DatasetColumnsError

# Trainer class name -> accepted column sets (any one of them must be present).
ACCEPTED: dict[str, list[set[str]]] = {
    "SFTTrainer": [{"text"}, {"messages"}, {"prompt", "completion"}, {"input_ids"}],
    "DPOTrainer": [{"chosen", "rejected"}],
    "GRPOTrainer": [{"prompt"}],
    "RLOOTrainer": [{"prompt"}],
    "KTOTrainer": [{"prompt", "completion", "label"}],
    "RewardTrainer": [{"chosen", "rejected"}],
}


def columns_of(dataset: Any) -> set[str] | None:
    names = getattr(dataset, "column_names", None)
    if names is None:
        features = getattr(dataset, "features", None)
        names = list(features) if features else None
    return set(names) if names is not None else None


def check_columns(trainer_cls: type, dataset: Any, split: str) -> None:
    """Raise :class:`DatasetColumnsError` when ``dataset`` cannot feed ``trainer_cls``."""
    if dataset is None:
        return
    kind = next((c.__name__ for c in trainer_cls.__mro__ if c.__name__ in ACCEPTED), None)
    found = columns_of(dataset)
    if kind is None or found is None:
        return
    options = ACCEPTED[kind]
    if any(option <= found for option in options):
        if kind == "SFTTrainer" and {"prompt", "completion", "text"} <= found:
            warn_text_beside_completion(split)
        return
    wanted = " or ".join("(" + ", ".join(sorted(o)) + ")" for o in options)
    raise DatasetColumnsError(
        f"the {split} dataset has columns ({', '.join(sorted(found)) or 'none'}) but {kind} needs {wanted}. "
        "Rename the columns (dataset.rename_column) or see https://huggingface.co/docs/trl/dataset_formats."
    )


def warn_text_beside_completion(split: str) -> None:
    """TRL (1.16) tokenizes prompt + completion when a row has both, but appends the EOS token to a ``text`` column
    instead of the completion when there is one: the model never sees where an answer ends and does not learn to
    stop (greedy answers run on). A column kept for another use (e.g. a selection plugin's text to embed) must not
    be called ``text``."""
    logging.getLogger("ftplugins").warning(
        "the %s dataset has a 'text' column beside 'prompt' and 'completion': TRL trains on prompt + completion but "
        "appends the EOS token to 'text', not to the completion, so the model does not learn to stop. Rename or drop "
        "'text' (dataset.rename_column('text', 'source_text')).", split)
