"""Reading evaluation rows from a file, a dataset or a list, with one clear error for a missing column."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ftplugins.errors import FtpluginsError


def load_rows(source: Any, required: Sequence[str], *, what: str) -> list[dict]:
    """Rows (dicts) from a ``.jsonl``/``.json``/``.csv`` path, a ``datasets.Dataset`` or an iterable of dicts.

    Every row must have the ``required`` columns; ``what`` names the harness in the error message."""
    name = source if isinstance(source, str) else type(source).__name__
    if isinstance(source, (str, os.PathLike)):
        rows = _read_file(os.fspath(source), what)
    else:
        rows = [dict(row) for row in _iterate(source, what)]
    if not rows:
        raise FtpluginsError(f"{what}: {name} holds no rows; give a file or dataset with at least one row.")
    columns = set(rows[0])
    missing = [c for c in required if c not in columns]
    if missing:
        raise FtpluginsError(
            f"{what}: {name} lacks the column(s) {', '.join(missing)} (found: {', '.join(sorted(columns)) or 'none'}); "
            f"expected {', '.join(required)}: rename the columns or convert the file.")
    for index, row in enumerate(rows):
        gaps = [c for c in required if row.get(c) is None or row.get(c) == ""]
        if gaps:
            raise FtpluginsError(f"{what}: row {index} of {name} has no value for {', '.join(gaps)}; fill it or "
                                 "drop the row.")
    return rows


def _iterate(source: Any, what: str) -> Iterable[Any]:
    try:
        return list(source)
    except TypeError:
        raise FtpluginsError(f"{what}: expected a file path, a datasets.Dataset or a list of dicts, got "
                             f"{type(source).__name__}.") from None


def _read_file(path: str, what: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FtpluginsError(f"{what}: no such file {path!r}; give a .jsonl, .json or .csv file.")
    suffix = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            if suffix == ".csv":
                rows = list(csv.DictReader(handle))
                for index, row in enumerate(rows):
                    if None in row:  # more cells than header names: an unquoted comma, usually
                        raise FtpluginsError(f"{what}: row {index} of {path!r} has more cells than the header "
                                             f"({', '.join(k for k in row if k is not None)}); quote cells that "
                                             "hold commas.")
                return rows
            if suffix == ".jsonl":
                return [json.loads(line) for line in handle if line.strip()]
            if suffix == ".json":
                data = json.load(handle)
                return data if isinstance(data, list) else [data]
    except (ValueError, csv.Error) as exc:
        raise FtpluginsError(f"{what}: cannot parse {path!r} as {suffix[1:]} ({exc}).") from None
    raise FtpluginsError(f"{what}: {path!r} has the extension {suffix or '(none)'}; expected .jsonl, .json or .csv.")
