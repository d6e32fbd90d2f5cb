"""Writing a selection: the chosen rows (JSON lines), a JSON report beside them, and a score histogram
(PNG, only when matplotlib is installed). Every file is written to a temporary name and moved into place."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def report_paths(output: str) -> tuple[str, str]:
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ".report.json", stem + ".scores.png"


def _publish(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(report: dict[str, Any], path: str) -> None:
    _publish(path, lambda tmp: open(tmp, "w", encoding="utf-8").write(json.dumps(report, indent=2, default=str)))


def write_histogram(scores: Any, name: str, path: str) -> bool:
    """A histogram of ``scores``; ``False`` (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(scores, bins=50)
    ax.set_xlabel(name)
    ax.set_ylabel("rows")
    fig.tight_layout()
    _publish(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def write_selection(selection: Any, output: str) -> dict[str, str]:
    """Write the rows to ``output`` and the report (+ histogram) beside it; returns the paths written."""
    report_path, png_path = report_paths(output)
    _publish(output, lambda tmp: selection.dataset.to_json(tmp, lines=True, force_ascii=False))
    written = {"rows": output, "report": report_path}
    if selection.scores is not None and write_histogram(selection.scores, selection.score_name, png_path):
        written["histogram"] = png_path
    write_report({**selection.report, "files": written}, report_path)
    return written
