"""The S3FT dataset construction (arXiv:2502.08130, Sec. 3), from the frozen initial model M0.

For each row (x, y): y_hat = M0(x), greedy. If judge(y_hat, y), the target is y_hat ("self"); else, when
paraphrasing is on, M0 rephrases y from a prompt built with the paraphrase template -> y_tilde, and if
judge(y_tilde, y) the target is y_tilde ("paraphrase"); else the target stays y ("gold"). Gold rows keep
their completion object untouched, so an always-False judge returns the input rows exactly (plain SFT).

Generation is batched (left padding, greedy, stop at EOS), runs in eval mode without gradients and puts
every module's train/eval flag back afterwards. Prompts are tokenized as ``SFTTrainer`` tokenizes them
(``tokenizer(prompt)`` for text, the chat template with the generation prompt for messages), so y_hat is
the continuation SFT would train. Conversational rows need a completion of exactly one assistant message;
its ``content`` is what the judge sees, and a non-gold target becomes ``[{"role": "assistant", ...}]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from ftplugins.errors import DatasetColumnsError, FtpluginsError
from ftplugins.objectives.sft_tokens import is_conversational

from .cache import ChunkCache, cache_key, weights_fingerprint
from .judges import Judge, judge_name, resolve_judge
from .options import DEFAULT_PARAPHRASE_TEMPLATE

logger = logging.getLogger("ftplugins.s3ft")

SOURCES = ("self", "paraphrase", "gold")
_PLACEHOLDER = re.compile(r"\{(prompt|completion)\}")


def build_dataset(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    judge: str | Judge = "normalized",
    *,
    paraphrase: bool = True,
    paraphrase_template: str = DEFAULT_PARAPHRASE_TEMPLATE,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    cache_dir: str | None = None,
    tests_column: str = "tests",
    code_timeout: float = 10.0,
    show_progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """(the S3FT training dataset, the branch report) for a prompt/completion ``datasets.Dataset``.

    ``model`` must be the *initial* model (nothing trained yet); it is only read. ``judge`` is a built-in name
    (see :mod:`.judges`), a dotted path or a callable ``judge(prediction, gold[, example=row]) -> bool``.
    With ``cache_dir`` each batch's targets are stored as it finishes, and a second call with the same inputs
    generates only the batches that are missing.
    """
    check_dataset(dataset)
    judge_fn = resolve_judge(judge, tests_column=tests_column, timeout=code_timeout)
    rows = dataset.to_list()
    conversational = is_conversational(rows[0]["prompt"]) if rows else False
    key_parts = {
        "model": model_identity(model),
        "tokenizer": tokenizer_identity(tokenizer),
        "judge": judge_name(judge),
        "paraphrase": paraphrase,
        "paraphrase_template": paraphrase_template if paraphrase else None,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "tests_column": tests_column if judge == "code" else None,
        "code_timeout": code_timeout if judge == "code" else None,
        "rows": rows_fingerprint(rows),
    }
    key = cache_key(key_parts)
    cache = ChunkCache(cache_dir, key, meta={**key_parts, "num_rows": len(rows)})

    from tqdm.auto import tqdm

    starts = range(0, len(rows), batch_size)
    outcomes: list[dict] = []
    generated = 0
    with tqdm(total=len(rows), desc="s3ft: building targets", disable=not show_progress) as bar, \
            frozen(model):
        for index, start in enumerate(starts):
            chunk = cache.load(index)
            batch = rows[start:start + batch_size]
            if chunk is None or len(chunk) != len(batch):
                chunk = construct_batch(model, tokenizer, batch, judge_fn, conversational=conversational,
                                        paraphrase=paraphrase, template=paraphrase_template,
                                        max_new_tokens=max_new_tokens, first_row=start)
                cache.save(index, chunk)
                generated += len(batch)
            outcomes += chunk
            bar.update(len(batch))

    counts = {source: sum(o["source"] == source for o in outcomes) for source in SOURCES}
    report = {**counts, "rows": len(rows), "generated_rows": generated, "cached_rows": len(rows) - generated,
              "judge": judge_name(judge), "paraphrase_enabled": paraphrase, "cache": cache.folder}
    logger.info("s3ft: %d row(s): %d model answer(s), %d paraphrase(s), %d gold (%d generated now, %d cached)",
                len(rows), counts["self"], counts["paraphrase"], counts["gold"], generated, len(rows) - generated)
    replaced = {i: o["target"] for i, o in enumerate(outcomes) if o["source"] != "gold"}
    if not replaced:
        return dataset, report

    def swap(row: dict, index: int) -> dict:
        if index not in replaced:
            return {"completion": row["completion"]}
        text = replaced[index]
        return {"completion": [{"role": "assistant", "content": text}] if conversational else text}

    return dataset.map(swap, with_indices=True, desc="s3ft: swapping targets"), report


def construct_batch(model: Any, tokenizer: Any, rows: list[dict], judge: Judge, *, conversational: bool,
                    paraphrase: bool, template: str, max_new_tokens: int, first_row: int = 0) -> list[dict]:
    """The three-branch outcome of each row: ``{"source", "target", "response", "paraphrase"}``."""
    golds = [gold_text(row, conversational, first_row + i) for i, row in enumerate(rows)]
    prompts = [prompt_ids(tokenizer, row["prompt"], conversational) for row in rows]
    responses = greedy_generate(model, tokenizer, prompts, max_new_tokens)
    outcomes = [{"source": "gold", "target": None, "response": r, "paraphrase": None} for r in responses]
    retry = []
    for i, (row, response, gold) in enumerate(zip(rows, responses, golds)):
        if judge(response, gold, row):
            outcomes[i].update(source="self", target=response)
        elif paraphrase:
            retry.append(i)
    if retry:
        asks = [paraphrase_request(template, rows[i]["prompt"], golds[i], conversational) for i in retry]
        rephrased = greedy_generate(model, tokenizer, [prompt_ids(tokenizer, a, conversational) for a in asks],
                                    max_new_tokens)
        for i, text in zip(retry, rephrased):
            outcomes[i]["paraphrase"] = text
            if judge(text, golds[i], rows[i]):
                outcomes[i].update(source="paraphrase", target=text)
    return outcomes


def greedy_generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of left-padded ``prompts`` (token ids), cut at the first EOS, decoded."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    stops = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         num_beams=1, pad_token_id=pad)
    texts = []
    for new in out[:, width:].tolist():
        end = next((i for i, t in enumerate(new) if t in stops), len(new))
        texts.append(tokenizer.decode(new[:end], skip_special_tokens=True))
    return texts


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Eval mode and no gradients while generating; every module's own train flag restored after."""
    import torch

    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def prompt_ids(tokenizer: Any, prompt: Any, conversational: bool) -> list[int]:
    if conversational:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = list(ids["input_ids"])
    else:
        ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise DatasetColumnsError(f"s3ft: prompt {prompt!r} tokenizes to nothing; the model cannot answer it.")
    return ids


def gold_text(row: dict, conversational: bool, index: int) -> str:
    completion = row["completion"]
    if not conversational:
        if not isinstance(completion, str) or not isinstance(row["prompt"], str):
            raise DatasetColumnsError(f"s3ft: row {index} mixes text and message lists in prompt/completion; "
                                      "use one format for the whole dataset.")
        return completion
    if not (is_conversational(row["prompt"]) and isinstance(completion, list) and len(completion) == 1
            and completion[0].get("role") == "assistant" and isinstance(completion[0].get("content"), str)):
        raise DatasetColumnsError(
            f"s3ft: conversational row {index} must have a completion of exactly one assistant message with text "
            f"content (got {completion!r}); the judge compares one answer. Split multi-turn completions into "
            "rows, or convert the dataset to text prompt/completion."
        )
    return completion[0]["content"]


def paraphrase_request(template: str, prompt: Any, gold: str, conversational: bool) -> Any:
    """The prompt asking M0 to rephrase ``gold``: the template filled in (one pass, braces in values safe)."""
    if conversational:
        question = "\n".join(m["content"] for m in prompt if isinstance(m.get("content"), str))
        values = {"prompt": question, "completion": gold}
        system = [m for m in prompt if m.get("role") == "system"]
        return [*system, {"role": "user", "content": _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)}]
    values = {"prompt": prompt, "completion": gold}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def check_dataset(dataset: Any) -> None:
    if not hasattr(dataset, "to_list") or not hasattr(dataset, "map"):
        raise FtpluginsError(
            f"s3ft builds targets for a map-style datasets.Dataset; got {type(dataset).__name__} (a streaming "
            "dataset cannot be cached and resumed). Load the dataset without streaming."
        )
    names = set(dataset.column_names)
    if not {"prompt", "completion"} <= names:
        raise DatasetColumnsError(
            f"s3ft judges a model answer against the gold completion, so it needs prompt/completion rows; the train "
            f"split has columns ({', '.join(sorted(names))}). Convert 'text' / 'messages' rows to prompt/completion."
        )


def model_identity(model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {"class": type(model).__name__, "name_or_path": getattr(config, "_name_or_path", ""),
            "weights": weights_fingerprint(model)}


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    return {"class": type(tokenizer).__name__, "name_or_path": getattr(tokenizer, "name_or_path", ""),
            "size": len(tokenizer), "chat_template": getattr(tokenizer, "chat_template", None)}


def rows_fingerprint(rows: list[dict]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()
