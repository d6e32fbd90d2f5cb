"""The pool (and target set) as an Arrow dataset, read in batches: never materialised as Python rows.

A pool is a ``datasets.Dataset`` (memory-mapped Arrow), a list of dicts (Python convenience), or a path: a
``.jsonl``/``.json``/``.csv``/``.parquet`` file, a ``save_to_disk`` folder, or a Hub dataset id.
Text for embedding comes from one column (``text_field``); ``auto`` picks the first of
:data:`AUTO_FIELDS` present. Chat messages become ``role: content`` lines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from ftplugins.errors import DatasetColumnsError, FtpluginsError

#: ``text_field="auto"`` takes the first of these that the pool has (kMQ embeds the instruction).
AUTO_FIELDS = ("text", "prompt", "instruction", "question", "messages", "input")
LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_pool(data: Any, what: str = "--data") -> Any:
    """A ``datasets.Dataset`` from a dataset, a list of dicts or a path; empty pools are refused."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        raise FtpluginsError(f"{what}: got a DatasetDict with splits {list(data)}; pass one split (dataset['train']).")
    if isinstance(data, datasets.IterableDataset):
        raise FtpluginsError(
            f"{what}: an IterableDataset cannot be selected from (selection needs random access to write the chosen "
            "rows); load it as a Dataset (Arrow on disk, memory-mapped) instead."
        )
    if isinstance(data, list):
        data = datasets.Dataset.from_list(data) if data else None
    elif isinstance(data, (str, os.PathLike)):
        data = _load_path(os.fspath(data), what)
    if data is None or len(data) == 0:
        raise FtpluginsError(f"{what}: the dataset is empty; selection needs at least one row.")
    return data


def _load_path(path: str, what: str) -> Any:
    import datasets

    ext = os.path.splitext(path)[1].lower()
    if os.path.isfile(path):
        if ext not in LOADERS:
            raise FtpluginsError(f"{what} {path}: unknown file type {ext!r}; expected one of {', '.join(LOADERS)}.")
        if os.path.getsize(path) == 0:
            return None
        return datasets.load_dataset(LOADERS[ext], data_files=path, split="train")
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    if ext in LOADERS:
        raise FtpluginsError(f"{what} {path}: no such file.")
    return datasets.load_dataset(path, split="train")


def resolve_text_field(dataset: Any, field: str, what: str = "--data") -> str:
    """The column to embed: ``field`` itself, or for ``auto`` the first of :data:`AUTO_FIELDS` present."""
    columns = list(dataset.column_names)
    if field == "auto":
        for name in AUTO_FIELDS:
            if name in columns:
                return name
        raise DatasetColumnsError(
            f"{what} has columns ({', '.join(columns)}) and none of {', '.join(AUTO_FIELDS)}; "
            "name the text column with text_field."
        )
    if field not in columns:
        raise DatasetColumnsError(
            f"text_field={field!r} is not a column of {what} (columns: {', '.join(columns)}); pick one of them."
        )
    return field


def as_text(value: Any) -> str:
    """A cell as text: strings as they are, chat messages as ``role: content`` lines, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict) and "content" in value[0]:
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def iter_batches(dataset: Any, columns: list[str], batch_size: int, start: int = 0, stop: int | None = None
                 ) -> Iterator[dict[str, list]]:
    """Column batches of rows ``[start, stop)``, read from Arrow one batch at a time."""
    stop = len(dataset) if stop is None else stop
    view = dataset.select_columns(columns)
    for begin in range(start, stop, batch_size):
        yield view[begin:min(begin + batch_size, stop)]


def content_fingerprint(dataset: Any, columns: list[str], batch_size: int = 4096) -> str:
    """A hash of the given columns' contents, in row order (the cache key's dataset part).

    Datasets' own ``_fingerprint`` is random for in-memory datasets, so the contents are hashed instead:
    one streaming pass, far cheaper than embedding them.
    """
    digest = hashlib.sha256(json.dumps([len(dataset), columns]).encode())
    for batch in iter_batches(dataset, columns, batch_size):
        for column in columns:
            for value in batch[column]:
                digest.update(as_text(value).encode("utf-8", "surrogatepass"))
                digest.update(b"\x00")
    return digest.hexdigest()[:24]
