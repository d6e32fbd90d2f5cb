"""Prompt/completion examples tokenized exactly as TRL's ``SFTTrainer`` tokenizes them.

Plugins that reshape data at the token level (packing many shots into one sequence, splicing a
harmful prefix in front of a refusal) hand ``SFTTrainer`` pre-tokenized rows (``input_ids`` and
``labels``), which it uses as they are. For such rows to train like the rows TRL would have built,
each example is tokenized as TRL 1.16's ``SFTTrainer._prepare_dataset`` does:

* standard text: EOS appended to the completion unless it already ends with it; ``prompt`` and
  ``prompt + completion`` tokenized with the tokenizer's own special tokens;
* conversational: ``prompt`` rendered with the chat template and the generation prompt, and
  ``prompt + completion`` rendered whole (``tools`` and ``chat_template_kwargs`` columns honoured);

and the completion starts where the two token lists diverge. The test suites compare these rows
with the ones ``SFTTrainer`` builds.

Why not call TRL's own: in TRL 1.16 this tokenization is a closure inside
``SFTTrainer._prepare_dataset`` (``tokenize_fn``), reachable only by building a trainer. So the
dependency range pins trl to the tested 1.16 series (pyproject.toml); a new TRL release is admitted
once ``tests/test_many_icl.py`` and ``tests/test_deep_align.py`` (which compare rows with
``SFTTrainer``'s) pass on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftplugins.errors import DatasetColumnsError, FtpluginsError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TextFormat:
    """How to tokenize a run's examples: the tokenizer, the EOS appended to text completions, the chat template."""

    tokenizer: Any
    eos_token: str
    chat_template: str | None = None

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text=text)["input_ids"])

    def render(self, messages: list, *, add_generation_prompt: bool = False, continue_final_message: bool = False,
               tools: Any = None, template_kwargs: dict | None = None) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template."""
        out = self.tokenizer.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template=self.chat_template,
            tools=tools,
            **(template_kwargs or {}),
        )
        return list(out["input_ids"])


def text_format(run: Any) -> TextFormat:
    """The :class:`TextFormat` of a run: its tokenizer, ``args.eos_token`` and ``args.chat_template_path``."""
    tokenizer = run_tokenizer(run)
    args = run.args
    eos = getattr(args, "eos_token", None) or tokenizer.eos_token
    template = None
    path = getattr(args, "chat_template_path", None)
    if path is not None:
        if not (os.path.isfile(path) and path.endswith((".jinja", ".j2"))):
            raise FtpluginsError(
                f"chat_template_path={path!r} clones a template from another model, which TRL applies only after the "
                "dataset hooks ran; save the template to a .jinja file and pass that instead."
            )
        with open(path, encoding="utf-8") as handle:
            template = handle.read()
    return TextFormat(tokenizer=tokenizer, eos_token=eos, chat_template=template)


def run_tokenizer(run: Any) -> Any:
    """The run's tokenizer: ``processing_class``, or the one saved with the model (what TRL would load)."""
    processing_class = run.processing_class
    if processing_class is None and run.model is not None:
        path = getattr(getattr(run.model, "config", None), "_name_or_path", "")
        if path:
            from transformers import AutoTokenizer

            trust = bool(getattr(run.args, "trust_remote_code", False))
            processing_class = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if processing_class is None:
        raise FtpluginsError(
            "this plugin tokenizes the dataset before the trainer does and needs the tokenizer: pass "
            "processing_class= to the trainer (or a model path with a saved tokenizer)."
        )
    from transformers import ProcessorMixin

    if isinstance(processing_class, ProcessorMixin):
        raise FtpluginsError(
            f"{type(processing_class).__name__} is a multimodal processor; pre-tokenized data shaping supports text "
            "tokenizers only."
        )
    return processing_class


def is_conversational(value: Any) -> bool:
    """A list of ``{"role", "content"}`` messages (TRL's conversational format)."""
    return isinstance(value, list) and (not value or isinstance(value[0], dict) and "role" in value[0])


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_prompt_completion(fmt: TextFormat, example: dict[str, Any]) -> tuple[list[int], int]:
    """``(input_ids, completion_start)`` of a prompt/completion example, as ``SFTTrainer`` builds them."""
    prompt, completion = example["prompt"], example["completion"]
    if is_conversational(prompt):
        kwargs = row_template_kwargs(example)
        prompt_ids = fmt.render(prompt, add_generation_prompt=True, **kwargs)
        ids = fmt.render(prompt + completion, **kwargs)
    else:
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DatasetColumnsError(
                f"prompt/completion must both be strings or both be lists of messages; got "
                f"{type(prompt).__name__} and {type(completion).__name__}."
            )
        if not completion.endswith(fmt.eos_token):
            completion = completion + fmt.eos_token
        prompt_ids = fmt.encode_text(prompt)
        ids = fmt.encode_text(prompt + completion)
    return ids, common_prefix_length(prompt_ids, ids)


def row_template_kwargs(example: dict[str, Any]) -> dict[str, Any]:
    import json

    tools = example.get("tools")
    return {
        "tools": json.loads(tools) if isinstance(tools, str) else tools,
        "template_kwargs": example.get("chat_template_kwargs") or {},
    }


def completion_labels(ids: Sequence[int], start: int, completion_only: bool = True) -> list[int]:
    """Labels of one example: the ids, with -100 on the prompt when ``completion_only``."""
    if not completion_only:
        return list(ids)
    return [IGNORE_INDEX] * start + list(ids[start:])


def truncate(ids: list[int], labels: list[int], max_length: int | None, mode: str = "keep_start"):
    """Truncate like ``SFTTrainer`` (``truncation_mode`` keep_start / keep_end)."""
    if max_length is None or len(ids) <= max_length:
        return ids, labels
    window = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)
    return ids[window], labels[window]
