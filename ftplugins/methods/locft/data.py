"""LocFT's editing data: rows to SFT prompt/completion pairs, and teacher-forced edit evaluation.

Editing format: ``prompt`` (str), the target column (str, ``target`` by default), optionally
``paraphrase_prompts`` (list of str, same target) and ``neighbourhood_prompts`` /
``neighbourhood_targets`` (lists of str: prompts the edit must not change, with their answers).
Only ``prompt`` -> target trains; the lists are for :func:`evaluate_edits`.
"""

from __future__ import annotations

from typing import Any

import torch

from ftplugins.errors import DatasetColumnsError


def separator_for(tokenizer: Any, setting: str = "auto") -> str:
    """The text between prompt and target: the reference's ' ', none, or (``auto``) a space unless the
    tokenizer cannot encode one (it would become ``<unk>``, and every edit would train on an unknown token)."""
    if setting == "none":
        return ""
    if setting == "space" or tokenizer is None:
        return " "
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    unknown = getattr(tokenizer, "unk_token_id", None)
    return " " if ids and (unknown is None or unknown not in ids) else ""


def completion_of(target: str, eos: str | None, separator: str = " ") -> str:
    """separator + target + EOS (the reference's leading space and trailing EOS; neither doubled)."""
    text = target if not separator or target.startswith(separator) or target[:1].isspace() else separator + target
    if eos and not text.endswith(eos):
        text += eos
    return text


def to_sft_rows(dataset: Any, tokenizer: Any, target_column: str = "target", separator: str = "auto") -> Any:
    """Prompt/completion rows for TRL (its completion-only loss masks the prompt)."""
    columns = list(getattr(dataset, "column_names", None) or [])
    missing = [c for c in ("prompt", target_column) if c not in columns]
    if missing:
        raise DatasetColumnsError(
            f"locft needs an editing dataset with columns 'prompt' and {target_column!r} (--locft_target_column); "
            f"missing {missing}, the dataset has {columns}. For the built-in arithmetic set use "
            "--locft_target_column answer.")
    eos = getattr(tokenizer, "eos_token", None)
    sep = separator_for(tokenizer, separator)

    def row(example):
        return {"prompt": example["prompt"], "completion": completion_of(str(example[target_column]), eos, sep)}

    return dataset.map(row, remove_columns=columns)


def _target_ids(tokenizer: Any, prompt: str, target: str, separator: str = " ") -> tuple[list[int], list[int]]:
    """Prompt ids and target ids as training tokenizes them (prompt, then prompt + completion)."""
    completion = completion_of(target, None, separator)
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids):]
    return prompt_ids, tokenizer(completion, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, prompt: str, target: str, separator: str = " ") -> bool:
    """Teacher-forced: every target token is the argmax after the prompt and the previous target tokens."""
    prompt_ids, target_ids = _target_ids(tokenizer, prompt, target, separator)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + target_ids], device=device)
    logits = model(input_ids=ids).logits[0]
    predicted = logits[len(prompt_ids) - 1:ids.shape[1] - 1].argmax(-1)
    return bool(torch.equal(predicted.cpu(), torch.tensor(target_ids)))


def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def evaluate_edits(model: Any, tokenizer: Any, dataset: Any, target_column: str = "target",
                   separator: str = "auto") -> dict:
    """``edit_success`` (edit prompts), ``paraphrase_success`` (paraphrases, same target) and
    ``neighbourhood_preservation`` (neighbourhood prompts keep their answers): fractions of exact
    teacher-forced matches; ``None`` where the dataset has no such prompts. ``separator``: as training's
    ``locft_separator``."""
    sep = separator_for(tokenizer, separator)
    training = model.training
    model.eval()
    edits, paraphrases, neighbours = [], [], []
    try:
        for example in dataset:
            target = str(example[target_column])
            edits.append(exact_match(model, tokenizer, example["prompt"], target, sep))
            for prompt in example.get("paraphrase_prompts") or []:
                paraphrases.append(exact_match(model, tokenizer, prompt, target, sep))
            prompts = example.get("neighbourhood_prompts") or []
            answers = example.get("neighbourhood_targets") or []
            if len(prompts) != len(answers):
                raise DatasetColumnsError(f"locft: a row has {len(prompts)} neighbourhood_prompts but "
                                          f"{len(answers)} neighbourhood_targets; they must pair up")
            for prompt, answer in zip(prompts, answers):
                neighbours.append(exact_match(model, tokenizer, prompt, str(answer), sep))
    finally:
        model.train(training)
    return {"edit_success": _rate(edits), "paraphrase_success": _rate(paraphrases),
            "neighbourhood_preservation": _rate(neighbours)}
