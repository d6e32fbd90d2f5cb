"""CLS-RL's reward functions, in the form TRL's ``GRPOTrainer`` calls them.

TRL calls each reward with ``prompts``, ``completions`` and every other dataset column as keyword arguments, and logs
its mean under ``rewards/<__name__>/mean``. Completions are strings (plain prompts) or one assistant message
(conversational prompts); anything else is refused rather than scored 0, which would hide a wiring mistake.
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

#: The whole completion: reasoning in <think>, then the answer in <answer> (reference ``format_reward``).
FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion: Any, index: int) -> str:
    """The text of one completion: a string, or a conversational completion of one assistant message."""
    if isinstance(completion, str):
        return completion
    if (isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict)
            and isinstance(completion[0].get("content"), str)):
        return completion[0]["content"]
    raise FtpluginsError(
        f"cls_rl reward: completion {index} is {type(completion).__name__} {str(completion)[:80]!r}; expected a "
        "string (plain prompts) or a list of one message dict with a string 'content' (conversational prompts), "
        "as TRL's GRPOTrainer passes them."
    )


def texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c, i) for i, c in enumerate(completions)]


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1 when the completion is exactly ``<think>…</think>`` then ``<answer>…</answer>`` (DOTALL, full match)."""
    return [1.0 if FORMAT.fullmatch(text) else 0.0 for text in texts(completions)]


format_reward.__name__ = "cls_rl_format"


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def same_number(label: str, answer: str) -> bool:
    """Whether ``answer`` states the number ``label``: math-verify when installed (``1/2`` = ``0.5``), else floats."""
    if importlib.util.find_spec("math_verify") is not None:
        from math_verify import parse, verify

        # math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere run without one.
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        return bool(verify(parse(label, parsing_timeout=timeout), parse(answer, parsing_timeout=timeout),
                           timeout_seconds=timeout))
    try:
        return float(answer) == float(label)
    except ValueError:
        return False


class LabelReward:
    """A reward that compares completions with the label column (picklable; ``__name__`` is what TRL logs)."""

    __name__ = "cls_rl_reward"

    def __init__(self, label_column: str = "label"):
        self.label_column = label_column

    def labels(self, kwargs: dict[str, Any], n: int) -> list[str]:
        if self.label_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("prompts", "completion_ids", "trainer_state"))
            raise FtpluginsError(
                f"{self.__name__}: the reward needs the label column {self.label_column!r}, and the batch has "
                f"{columns or 'no other columns'}; keep the label in the training dataset or set cls_rl_label_column."
            )
        labels = [str(label) for label in kwargs[self.label_column]]
        if len(labels) != n:
            raise FtpluginsError(f"{self.__name__}: {n} completions but {len(labels)} labels")
        return labels

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = texts(completions)
        return [1.0 if self.correct(a, l) else 0.0 for a, l in zip(answers, self.labels(kwargs, len(answers)))]

    def correct(self, completion: str, label: str) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.__name__}(label_column={self.label_column!r})"


class AccuracyReward(LabelReward):
    """1 when the ``<answer>`` content (the whole completion when there is none, as the reference does) equals the
    label, stripped and case-insensitive; a numeric label also accepts the same number written otherwise.

    The reference runs math-verify on the *whole* completion first, so a number anywhere in the reasoning can match;
    here it checks the extracted answer only, and only for numeric labels (class names are not maths)."""

    __name__ = "cls_rl_accuracy"

    def correct(self, completion: str, label: str) -> bool:
        found = ANSWER.search(completion)
        answer = (found.group(1) if found else completion).strip()
        label = label.strip()
        if answer.lower() == label.lower():
            return True
        return is_number(label) and bool(answer) and same_number(label, answer)


class ExactAnswerReward(LabelReward):
    """No-Thinking-CLS-RL: 1 only when the raw completion is exactly the stripped label (``" cat"`` and ``"Cat"``
    both score 0 for ``cat``), as ``grpo_direct.py`` of the reference compares them."""

    __name__ = "cls_rl_exact"

    def correct(self, completion: str, label: str) -> bool:
        return completion == label.strip()


def rewards_for(mode: str, label_column: str) -> list[Any]:
    """The reward functions of ``mode`` (``think``: format + accuracy; ``no_think``: exact answer)."""
    if mode == "think":
        return [format_reward, AccuracyReward(label_column)]
    return [ExactAnswerReward(label_column)]
