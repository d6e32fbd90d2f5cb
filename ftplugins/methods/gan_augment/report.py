"""Writing the augmented rows and the report atomically (:mod:`ftplugins.atomic`)."""

from __future__ import annotations

import json
import os
from typing import Any

from ftplugins.atomic import staged_dir


def write_json(report: dict, path: str) -> None:
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with staged_dir(folder) as tmp:
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(report, f, indent=2)


def report_path(rows_path: str) -> str:
    """``augmented.jsonl`` -> ``augmented.report.json`` (beside it)."""
    return os.path.splitext(rows_path)[0] + ".report.json"


def write_rows_and_report(dataset: Any, report: dict, path: str) -> None:
    """The rows as JSON lines at ``path`` and the report beside it; both appear only when both are whole."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with staged_dir(folder) as tmp:
        with open(os.path.join(tmp, name), "w") as f:
            for row in dataset:
                f.write(json.dumps(row) + "\n")
        with open(os.path.join(tmp, os.path.basename(report_path(path))), "w") as f:
            json.dump(report, f, indent=2)
