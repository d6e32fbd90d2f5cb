"""The ``task`` column: task names become indices, and every declared task must have rows (checked on the raw
dataset, before the trainer builds anything)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ftplugins.errors import FtpluginsError

TASK_COLUMN = "task"


def index_tasks(dataset: Any, tasks: list[tuple[str, int]], split: str, require_all: bool) -> Any:
    names = [name for name, _ in tasks]
    columns = getattr(dataset, "column_names", None) or []
    if TASK_COLUMN not in columns:
        raise FtpluginsError(f"hyper_adapter: the {split} dataset has no {TASK_COLUMN!r} column (columns: {columns}); "
                             f"add one holding each row's task: an index into, or a name of, {names}.")
    values = list(dataset[TASK_COLUMN])
    indices = []
    for value in values:
        index = names.index(value) if isinstance(value, str) and value in names else value
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(tasks):
            raise FtpluginsError(f"hyper_adapter: {split} row with task {value!r}; expected a name in {names} or an "
                                 f"index 0..{len(tasks) - 1} (--hyper_adapter_tasks).")
        indices.append(index)
    if require_all:
        counts = Counter(indices)
        empty = [names[t] for t in range(len(tasks)) if counts[t] == 0]
        if empty:
            raise FtpluginsError(f"hyper_adapter: tasks {empty} have no examples in the {split} dataset; give each "
                                 "task in --hyper_adapter_tasks rows, or drop it from the list.")
    if "label" in columns:
        for index, label in zip(indices, dataset["label"]):
            name, count = tasks[index]
            if label is not None and not 0 <= label < count:
                raise FtpluginsError(f"hyper_adapter: {split} row of task {name!r} with label {label}; the task has "
                                     f"{count} labels (0..{count - 1}): fix the row or the task's NUM_LABELS.")
    if values != indices:
        dataset = dataset.remove_columns(TASK_COLUMN).add_column(TASK_COLUMN, indices)
    return dataset
