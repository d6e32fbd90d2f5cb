"""MBPP-format pass@k: ``{text, code, test_list}`` rows, n samples per task, run through the sandbox.

Format (google-research/mbpp): ``task_id``, ``text`` (the task), ``code`` (a reference solution),
``test_list`` (assert statements; a list, or a JSON list in a CSV cell) and optionally ``test_setup_code``.
Prompt: the MBPP paper's, with the few-shot examples of task ids 2, 3 and 4 when the data holds them (they are
then not evaluated), else zero-shot::

    You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:

    {tests}
    [BEGIN]
    {code}
    [DONE]

The model completes after ``[BEGIN]``; its code is cut at ``[DONE]`` (or taken from its first fenced block).
Each sample runs with the task's tests in :func:`ftplugins.eval.sandbox.run_code` -- the one sandboxed runner
(resource limits, no network, read-only file system where namespaces exist, every process killed after the
run): code that hangs, forks, allocates or writes outside its folder is a failed sample, never a crash.
Scores: the unbiased pass@k (:mod:`.passk`) for every k <= n.

* Python: :func:`evaluate_mbpp` (generate + score) or :func:`score_samples` (score completions you have).
* CLI: ``ftplugins eval mbpp --model DIR --data FILE --n 10 --k 1,5,10`` (or ``python -m ftplugins.eval mbpp``).
* Plugin ``mbpp_eval``: evaluates after training; metrics go to the Trainer's log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ftplugins.errors import FtpluginsError

from .passk import mean_pass_at_k

COLUMNS = ("text", "code", "test_list")
SHOT_IDS = (2, 3, 4)  # the MBPP paper's prompt examples
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mbpp_tiny.jsonl")
WHAT = "mbpp"


def load_mbpp(source: Any) -> list[dict]:
    """MBPP rows from a path / dataset / list; ``test_list`` parsed to a list of strings, ``task_id`` filled in."""
    from .rows import load_rows

    rows = load_rows(source, COLUMNS, what=WHAT)
    for index, row in enumerate(rows):
        tests = row["test_list"]
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except ValueError:
                tests = [line for line in tests.splitlines() if line.strip()]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise FtpluginsError(f"{WHAT}: row {index} (task_id {row.get('task_id', index)}) has test_list "
                                 f"{row['test_list']!r}; expected a non-empty list of assert statements.")
        row["test_list"] = tests
        row["task_id"] = _task_id(row.get("task_id", index))
    return rows


def _task_id(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def format_task(row: dict) -> str:
    tests = "\n".join(row["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n")


def build_prompt(row: dict, shots: Sequence[dict]) -> str:
    examples = "".join(f"{format_task(s)}[BEGIN]\n{s['code']}\n[DONE]\n" for s in shots)
    return f"{examples}{format_task(row)}[BEGIN]\n"


def split_shots(rows: list[dict], shot_ids: Sequence[Any] | None) -> tuple[list[dict], list[dict]]:
    """(prompt examples, tasks to evaluate). ``None``: MBPP's ids 2-4 if all present, else zero-shot."""
    by_id = {row["task_id"]: row for row in rows}
    if shot_ids is None:
        shot_ids = SHOT_IDS if all(i in by_id for i in SHOT_IDS) else ()
    missing = [i for i in shot_ids if i not in by_id]
    if missing:
        raise FtpluginsError(f"{WHAT}: few-shot task ids {missing} are not in the data (task ids: "
                             f"{sorted(by_id, key=str)[:10]}...); pick ids that exist or pass no shots.")
    shots = [by_id[i] for i in shot_ids]
    tasks = [row for row in rows if row["task_id"] not in set(shot_ids)]
    if not tasks:
        raise FtpluginsError(f"{WHAT}: every row is a few-shot example; nothing is left to evaluate.")
    return shots, tasks


def extract_program(completion: str) -> str:
    """The completion's code: its first fenced block, else the text before ``[DONE]``."""
    from .judges import extract_code

    return extract_code(completion.split("[DONE]", 1)[0])


def score_samples(tasks: Sequence[dict], samples: Sequence[Sequence[str]], ks: Sequence[int] = (1,), *,
                  timeout: float = 10.0, limits: Any = None, workers: int = 1) -> dict:
    """Run every completion with its task's tests in the sandbox; pass@k for each k and a per-task record."""
    from .sandbox import namespaces_available, run_code

    if len(samples) != len(tasks):
        raise FtpluginsError(f"{WHAT}: {len(samples)} sample lists for {len(tasks)} tasks; expected one per task.")
    n_min = min(len(s) for s in samples)
    for k in ks:
        if k > n_min:
            raise FtpluginsError(f"{WHAT}: pass@{k} needs at least {k} samples per task but a task has {n_min}; "
                                 f"raise n to {k} or drop k={k}.")
    namespaces_available()  # probe once, before the worker threads
    jobs = [(t, s) for t, task in enumerate(tasks) for s in samples[t]]

    def run(job):
        task = tasks[job[0]]
        tests = "\n".join([task.get("test_setup_code") or "", *task["test_list"]])
        return run_code(extract_program(job[1]), tests, timeout=timeout, limits=limits).reason

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(run, jobs))
    records, position = [], 0
    for t, task in enumerate(tasks):
        outcome = reasons[position:position + len(samples[t])]
        position += len(samples[t])
        records.append({"task_id": task["task_id"], "n": len(outcome), "correct": outcome.count("passed"),
                        "outcomes": outcome})
    counts = [(r["n"], r["correct"]) for r in records]
    metrics = {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}
    return {"metrics": metrics, "tasks": records}


def evaluate_mbpp(model: Any, tokenizer: Any, data: Any = TINY, *, n: int = 1, ks: Sequence[int] = (1,),
                  temperature: float | None = None, max_new_tokens: int = 256, batch_size: int = 8,
                  shot_ids: Sequence[Any] | None = None, timeout: float = 10.0, limits: Any = None,
                  workers: int = 1, seed: int | None = 0) -> dict:
    """Generate ``n`` completions per task and score them: ``{"metrics": {"pass@k": ...}, "tasks": [...]}``.

    ``temperature`` defaults to 0 (greedy) for n=1 and 0.8 otherwise (the usual pass@k sampling)."""
    from .generation import generate_texts

    rows = load_mbpp(data)
    shots, tasks = split_shots(rows, shot_ids)
    if temperature is None:
        temperature = 0.0 if n == 1 else 0.8
    prompts = [build_prompt(task, shots) for task in tasks]
    samples = generate_texts(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                             batch_size=batch_size, seed=seed, stop=("[DONE]",))
    result = score_samples(tasks, samples, ks, timeout=timeout, limits=limits, workers=workers)
    for record, texts in zip(result["tasks"], samples):
        record["samples"] = texts
    result["config"] = {"n": n, "ks": list(ks), "temperature": temperature, "max_new_tokens": max_new_tokens,
                        "shots": [s["task_id"] for s in shots], "tasks": len(tasks)}
    return result
