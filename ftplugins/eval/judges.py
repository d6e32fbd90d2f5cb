"""Judges: does a model's answer agree with the gold answer? Shared by s3ft (which targets to keep) and the
evaluation harnesses (knowledge infusion, conjugate prompting).

A judge is a callable ``judge(prediction: str, gold: str) -> bool``; if it also takes an ``example``
keyword, it receives the whole dataset row (the code judge reads the row's unit tests there). Built in:

* ``exact`` -- equal after stripping surrounding whitespace;
* ``normalized`` -- equal after lower-casing, removing punctuation and collapsing whitespace;
* ``numeric`` -- the last number of each text (``1,234.5`` style commas dropped) equal within 1e-6
  relative (the paper's final-answer match for maths);
* ``code`` -- the prediction's code (its first fenced block, else the whole text) followed by the row's
  tests runs in the sandbox (a fresh interpreter) and exits 0 within the timeout.

The code judge runs untrusted code through the one sandboxed runner, :func:`ftplugins.eval.sandbox.run_code`:
resource limits, a launcher without secrets between the trainer and the code, every process killed after each
run, and, where Linux permits user namespaces, no network, a read-only file system and a PID namespace that
hides the trainer. :mod:`ftplugins.eval.sandbox` says exactly what holds with and without namespaces.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import string
from collections.abc import Callable
from functools import partial
from typing import Any

from ftplugins.errors import FtpluginsError
from ftplugins.eval.sandbox import run_code

Judge = Callable[..., bool]

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)```", re.DOTALL)


def exact_match(prediction: str, gold: str) -> bool:
    return prediction.strip() == gold.strip()


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def normalized_match(prediction: str, gold: str) -> bool:
    return normalize(prediction) == normalize(gold)


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(prediction: str, gold: str) -> bool:
    """The final answers (last numbers) agree; a text without a number never matches."""
    a, b = last_number(prediction), last_number(gold)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def extract_code(text: str) -> str:
    """The first fenced code block of ``text``, else ``text`` itself."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def code_tests_pass(prediction: str, gold: str, *, example: dict | None = None, tests_column: str = "tests",
                    timeout: float = 10.0) -> bool:
    """The prediction's code passes the row's unit tests (``gold`` is not run; the tests are the spec)."""
    tests = (example or {}).get(tests_column)
    if tests is None:
        raise FtpluginsError(
            f"code judge: the row has no {tests_column!r} column with unit tests (columns: "
            f"{', '.join(sorted(example or {}))}); add one or set s3ft_code_tests_column."
        )
    if not isinstance(tests, str):
        tests = "\n".join(tests)
    return run_code(extract_code(prediction), tests, timeout=timeout).passed


BUILTIN = {
    "exact": exact_match,
    "normalized": normalized_match,
    "normalised": normalized_match,
    "numeric": numeric_match,
    "code": code_tests_pass,
}


def resolve_judge(judge: str | Judge, *, tests_column: str = "tests", timeout: float = 10.0,
                  option: str = "s3ft_judge") -> Judge:
    """A callable ``judge(prediction, gold, example)`` from a built-in name, a dotted path or a callable.

    ``option`` names the setting in error messages (``s3ft_judge``, ``--judge``, ...)."""
    if callable(judge):
        func = judge
    elif judge == "code":
        func = partial(code_tests_pass, tests_column=tests_column, timeout=timeout)
    elif judge in BUILTIN:
        func = BUILTIN[judge]
    else:
        func = import_judge(judge, option=option)
    return with_example(func)


def import_judge(path: str, option: str = "s3ft_judge") -> Judge:
    """``pkg.mod:func`` or ``pkg.mod.func`` -> the function."""
    builtins = ", ".join(sorted(BUILTIN))
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise FtpluginsError(
            f"{option}={path!r} is neither a built-in judge ({builtins}) nor a dotted path; "
            "give 'pkg.module:function' or 'pkg.module.function'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FtpluginsError(
            f"{option}={path!r}: cannot import module {module_name!r} ({exc}); install it or put it on PYTHONPATH "
            f"(built-in judges: {builtins})."
        ) from None
    func = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise FtpluginsError(f"{option}={path!r}: module {module_name!r} has no attribute {attr!r}.")
    if not callable(func):
        raise FtpluginsError(
            f"{option}={path!r} is a {type(func).__name__}, not a callable judge(prediction, gold) -> bool."
        )
    return func


def with_example(func: Judge) -> Judge:
    """Call ``func`` with ``example=row`` only when it takes that keyword."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "example" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def judge(prediction: str, gold: str, example: dict | None = None) -> bool:
        return bool(func(prediction, gold, example=example) if takes else func(prediction, gold))

    judge.__wrapped__ = func  # type: ignore[attr-defined]
    return judge


def judge_name(judge: Any) -> str:
    """A stable name for the cache key and the report: ``module:qualname`` of a function, or of the class of a
    callable object (so the cache outlives the process; change the name when you change what a judge does)."""
    if isinstance(judge, str):
        return judge
    target = getattr(judge, "func", judge)  # functools.partial
    if not hasattr(target, "__qualname__"):
        target = type(target)
    return f"{getattr(target, '__module__', '?')}:{target.__qualname__}"
