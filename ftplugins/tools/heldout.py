"""Held-out scores for the greedy soup: higher is better.

An evaluator is any callable ``evaluate(model) -> float``. :func:`loss_evaluator` is the default: the
negated mean token loss of a causal LM on held-out texts (so a lower loss is a higher score).
:func:`exact_match_evaluator` is the share of prompt/target rows answered exactly (teacher-forced, as
locft's ``evaluate_edits``); :func:`user_evaluator` loads ``pkg.mod:func`` (called as
``func(model, tokenizer)``) for any task metric.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

Evaluator = Callable[[Any], float]


def read_texts(source: str | Sequence[Any], text_field: str = "text") -> list[str]:
    """Held-out texts from a ``.json``/``.jsonl`` file or a sequence of strings / rows.

    A row gives ``row[text_field]``, or ``prompt + completion`` when it has those instead.
    """
    rows = _read_rows(source) if isinstance(source, str) else list(source)
    texts = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and text_field in row:
            texts.append(str(row[text_field]))
        elif isinstance(row, dict) and "prompt" in row and "completion" in row:
            texts.append(str(row["prompt"]) + str(row["completion"]))
        else:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise FtpluginsError(f"held-out row {i} has no {text_field!r} field (it has {keys}); pass "
                                 "--heldout-text-field, or rows with prompt and completion")
    if not texts:
        raise FtpluginsError("the held-out set is empty; a greedy soup needs held-out examples to score its "
                             "ingredients (pass a non-empty dataset)")
    return texts


def _read_rows(path: str) -> list[Any]:
    if not os.path.isfile(path):
        raise FtpluginsError(f"held-out file {path!r} does not exist; pass a .jsonl file (one JSON row a line) or a "
                             ".json list")
    with open(path) as handle:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        return json.load(handle)


def loss_evaluator(texts: str | Sequence[Any], tokenizer: Any, batch_size: int = 8, max_length: int = 512,
                   text_field: str = "text") -> Evaluator:
    """``-mean token cross-entropy`` of the model on ``texts`` (every token of every text counts once)."""
    texts = read_texts(texts, text_field)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def evaluate(model) -> float:
        import torch

        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        device = next(model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length).to(device)
                logits = model(**batch).logits[:, :-1].float()
                labels = batch["input_ids"][:, 1:]
                mask = batch["attention_mask"][:, 1:].bool()
                losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
                total += float(losses[mask].sum())
                count += int(mask.sum())
        model.train(was_training)
        if count == 0:
            raise FtpluginsError("the held-out texts have no token to predict (each needs at least two tokens)")
        return -total / count

    return evaluate


def exact_match_evaluator(rows: str | Sequence[Any], tokenizer: Any, target_field: str = "target") -> Evaluator:
    """Share of rows whose ``target`` (or ``completion``) the model predicts token for token after ``prompt``
    (teacher-forced argmax; the same check as locft's ``evaluate_edits``)."""
    from ftplugins.methods.locft.data import exact_match

    rows = _read_rows(rows) if isinstance(rows, str) else list(rows)
    pairs = []
    for i, row in enumerate(rows):
        target = row.get(target_field, row.get("completion")) if isinstance(row, dict) else None
        if target is None or "prompt" not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise FtpluginsError(f"held-out row {i} needs 'prompt' and {target_field!r} (or 'completion') for the "
                                 f"exact-match score; it has {keys}")
        pairs.append((str(row["prompt"]), str(target)))
    if not pairs:
        raise FtpluginsError("the held-out set is empty; a greedy soup needs held-out examples to score its "
                             "ingredients (pass a non-empty dataset)")

    def evaluate(model) -> float:
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            hits = sum(exact_match(model, tokenizer, prompt, target) for prompt, target in pairs)
        model.train(was_training)
        return hits / len(pairs)

    return evaluate


def user_evaluator(spec: str, tokenizer: Any = None) -> Evaluator:
    """Load ``pkg.mod:func`` and call it as ``func(model, tokenizer) -> float`` (higher is better)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise FtpluginsError(f"evaluator {spec!r}: expected 'package.module:function'")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FtpluginsError(f"evaluator {spec!r} could not be loaded ({exc}); check that the module is importable "
                             "and defines the function") from exc
    return functools.partial(func, tokenizer=tokenizer)


METRICS = ("loss", "exact_match")


def make_evaluator(tokenizer: Any, heldout: Any = None, metric: str = "loss", evaluator: str | None = None,
                   text_field: str = "text") -> Evaluator:
    """The evaluator the command line and the ``soup`` plugin ask for: ``evaluator`` (``pkg.mod:func``) if
    given, else ``metric`` on the ``heldout`` rows."""
    if evaluator:
        return user_evaluator(evaluator, tokenizer)
    if heldout is None:
        raise FtpluginsError("a greedy soup needs a held-out set (a .jsonl file) or an evaluator "
                             "package.module:function")
    if metric == "exact_match":
        return exact_match_evaluator(heldout, tokenizer)
    if metric != "loss":
        raise FtpluginsError(f"held-out metric {metric!r}: expected one of {', '.join(METRICS)}")
    return loss_evaluator(heldout, tokenizer, text_field=text_field)
