"""Few-shot prefixes: k in-context examples from a disjoint pool in front of every prompt.

After the paper's few-shot-prompted SFT (EleutherAI/scalable-elicitation): every train and test input
is preceded by k examples, reshuffled per input. Our rendering for prompt/completion rows:

* standard text: ``LEAD shot_1 SEP shot_2 SEP ... shot_k QSEP prompt`` where ``shot_i`` is the pool example's
  prompt + completion (as SFT concatenates them, without the EOS SFT appends to targets), SEP is
  ``fewshot_prefix_separator`` (default a blank line, as the paper joins its examples), LEAD is
  ``fewshot_prefix_lead`` (default none) and QSEP ``fewshot_prefix_query_separator`` (default SEP): a model
  taught to read examples in one layout (a task tag, a marker before the query) is prompted in it;
* conversational: the shots become earlier turns (``user`` prompt, ``assistant`` completion, ...) after
  the row's own leading system messages; the shots' system messages are dropped.

The completion is untouched, so with TRL's completion-only loss the shots are context, never targets.
Shots are drawn without replacement with ``random.Random("fewshot_prefix:{seed}:{split}:{row}")``:
the same seed gives the same rows. Disjointness is by content: a train row equal to a pool example
(same prompt and completion) is dropped, so duplicates in the data cannot leak a pool example into
the targets. The shots' pool indices are kept in the ``fewshot_prefix_shots`` column (the trainer drops
it before collation).
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any

from ftplugins.errors import DatasetColumnsError, FtpluginsError
from ftplugins.objectives.sft_tokens import is_conversational

logger = logging.getLogger("ftplugins.fewshot_prefix")

SHOTS_COLUMN = "fewshot_prefix_shots"


def example_key(row: dict) -> str:
    """A content key of an example (prompt + completion), for disjointness."""
    return json.dumps([row["prompt"], row["completion"]], sort_keys=True, ensure_ascii=False)


def check_columns(dataset: Any, what: str) -> None:
    if not hasattr(dataset, "select") or not hasattr(dataset, "__len__"):
        raise FtpluginsError(
            f"fewshot_prefix draws a pool from the {what} and prefixes it row by row, which a streaming (iterable) "
            "dataset cannot do; load the dataset without streaming."
        )
    names = set(dataset.column_names)
    if not {"prompt", "completion"} <= names:
        raise DatasetColumnsError(
            f"fewshot_prefix prefixes prompt/completion examples; the {what} has columns "
            f"({', '.join(sorted(names))}). Convert 'text' / 'messages' rows to prompt/completion first."
        )


def split_pool(dataset: Any, pool_size: int, seed: int) -> tuple[Any, list[dict]]:
    """(the train rows left, the pool): ``pool_size`` rows drawn with the seed, kept in dataset order."""
    check_columns(dataset, "train split")
    if pool_size >= len(dataset):
        raise FtpluginsError(
            f"fewshot_prefix_pool_size={pool_size} holds out every row of the train split ({len(dataset)} rows); "
            "lower it or give a separate pool with fewshot_prefix_pool_path."
        )
    order = list(range(len(dataset)))
    random.Random(f"fewshot_prefix:{seed}:pool").shuffle(order)
    pool_rows = sorted(order[:pool_size])
    held = set(pool_rows)
    pool = [{"prompt": dataset[i]["prompt"], "completion": dataset[i]["completion"]} for i in pool_rows]
    return dataset.select([i for i in range(len(dataset)) if i not in held]), pool


def load_pool(path: str) -> list[dict]:
    """The pool rows of a JSON/JSONL file or a dataset folder."""
    import datasets

    if not os.path.exists(path):
        raise FtpluginsError(f"fewshot_prefix_pool_path={path!r} does not exist; give a JSON/JSONL file or a "
                             "dataset folder with prompt/completion columns.")
    if os.path.isfile(path):
        loaded = datasets.load_dataset("json", data_files=path, split="train")
    else:
        try:
            loaded = datasets.load_from_disk(path)
        except FileNotFoundError:
            loaded = datasets.load_dataset(path)
        if isinstance(loaded, (datasets.DatasetDict, dict)):
            if "train" not in loaded:
                raise FtpluginsError(f"fewshot_prefix_pool_path={path!r} has splits {sorted(loaded)} but no 'train'; "
                                     "point to one split's folder or file.")
            loaded = loaded["train"]
    check_columns(loaded, f"pool {path!r}")
    if len(loaded) == 0:
        raise FtpluginsError(f"fewshot_prefix_pool_path={path!r} holds no rows.")
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in loaded]


def drop_pool_examples(dataset: Any, pool: list[dict], split: str) -> Any:
    """``dataset`` without the rows equal to a pool example (pool examples are never targets)."""
    keys = {example_key(p) for p in pool}
    keep = [i for i, row in enumerate(dataset) if example_key(row) not in keys]
    dropped = len(dataset) - len(keep)
    if dropped:
        logger.warning("fewshot_prefix: dropped %d %s row(s) equal to an in-context pool example.", dropped, split)
    if not keep:
        raise FtpluginsError(f"fewshot_prefix: every {split} row is also a pool example; nothing is left to train on.")
    return dataset.select(keep) if dropped else dataset


def prefix_dataset(dataset: Any, pool: list[dict], *, k: int, seed: int, split: str,
                   separator: str = "\n\n", lead: str = "", query_separator: str | None = None) -> Any:
    """``dataset`` with every prompt preceded by k pool examples (and a ``fewshot_prefix_shots`` column)."""
    check_columns(dataset, f"{split} split")
    if k > len(pool):
        raise FtpluginsError(f"fewshot_prefix_k={k} but the pool holds {len(pool)} example(s); draw at most "
                             "as many shots as the pool holds (raise fewshot_prefix_pool_size or lower k).")
    conversational = is_conversational(pool[0]["prompt"])
    if conversational and (lead or query_separator is not None):
        raise FtpluginsError("fewshot_prefix_lead and fewshot_prefix_query_separator lay out text prompts; in a "
                             "conversation the shots are earlier turns: put an instruction in a system message.")
    layout = {"separator": separator} if conversational else {
        "separator": separator, "lead": lead, "query_separator": query_separator}

    def add_shots(row: dict, index: int) -> dict:
        if is_conversational(row["prompt"]) != conversational:
            raise DatasetColumnsError(
                f"fewshot_prefix: {split} row {index} is {'' if not conversational else 'not '}conversational but "
                "the pool is; the pool and the dataset must use one format."
            )
        shots = random.Random(f"fewshot_prefix:{seed}:{split}:{index}").sample(range(len(pool)), k)
        render = prefix_messages if conversational else prefix_text
        return {"prompt": render(row["prompt"], [pool[s] for s in shots], **layout), SHOTS_COLUMN: shots}

    return dataset.map(add_shots, with_indices=True, desc=f"fewshot_prefix ({split})")


def prefix_text(prompt: str, shots: list[dict], separator: str, lead: str = "", query_separator: str | None = None
                ) -> str:
    examples = separator.join(s["prompt"] + s["completion"] for s in shots)
    return lead + examples + (separator if query_separator is None else query_separator) + prompt


def prefix_messages(prompt: list[dict], shots: list[dict], separator: str) -> list[dict]:
    lead = 0
    while lead < len(prompt) and prompt[lead].get("role") == "system":
        lead += 1
    turns: list[dict] = []
    for shot in shots:
        turns += [m for m in shot["prompt"] if m.get("role") != "system"] + list(shot["completion"])
    return list(prompt[:lead]) + turns + list(prompt[lead:])
