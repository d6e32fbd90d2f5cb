"""Synthetic procedural tasks, character-level, and the tokenizer they use.

Every task turns a ``random.Random`` into one example ``{"prompt", "completion", "answer"}``:
the prompt is ``<tag>:<input>=``, the completion is what the model must write (TRL appends EOS),
the answer is what exact-match scoring compares (the text after the last ``>`` for tasks that
write intermediate steps, the whole completion otherwise).

Pre-training family: copy, reverse, counting, a number below 100 plus a digit answered directly,
and multi-digit column addition with every column written out. Held-out targets: a four-digit sum
with every partial sum written out (multi-step arithmetic with intermediate steps, the Masked
Thought setting; each step is a pre-training addition) and the same sum answered directly.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = string.ascii_lowercase
ALPHABET = sorted(set(LETTERS + string.digits + "+-=:,;>|"))
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class Task:
    name: str
    tag: str
    make: Callable[[random.Random], tuple[str, str]]  # rng -> (input, completion)
    max_new_tokens: int
    steps: bool = False  # the completion writes intermediate steps, the answer follows the last ">"

    def example(self, rng: random.Random) -> dict[str, str]:
        text, completion = self.make(rng)
        return {"prompt": f"{self.tag}:{text}=", "completion": completion, "answer": answer_of(completion, self.steps),
                "task": self.name}


def answer_of(completion: str, steps: bool) -> str:
    return completion.rsplit(">", 1)[-1] if steps else completion


def _word(rng: random.Random, low: int, high: int, letters: str = LETTERS) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))


def copy_task(rng):
    word = _word(rng, 3, 6)
    return word, word


def reverse_task(rng):
    word = _word(rng, 3, 6)
    return word, word[::-1]


def count_task(rng):
    word = _word(rng, 4, 9, "abcde")
    letter = rng.choice("abcde")
    return f"{letter}|{word}", str(word.count(letter))


def add_task(rng):
    """A number below 100 plus a digit, answered directly: the step the chain targets are made of."""
    a, b = rng.randint(0, 99), rng.randint(0, 9)
    return f"{a}+{b}", str(a + b)


def column_addition_steps(a: int, b: int) -> str:
    """``37+48`` -> ``7+8=15,3+4+1=8>85``: one written step per column, carry included."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ",".join(steps) + f">{a + b}"


def add_steps_task(rng):
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"{a}+{b}", column_addition_steps(a, b)


def chain_steps_task(rng):
    """Four digits, every partial sum written: ``3+4+2+8`` -> ``3+4=7,7+2=9,9+8=17>17``."""
    terms = [rng.randint(0, 9) for _ in range(4)]
    steps, total = [], terms[0]
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return "+".join(map(str, terms)), ",".join(steps) + f">{total}"


def chain_direct_task(rng):
    terms = [rng.randint(0, 9) for _ in range(4)]
    return "+".join(map(str, terms)), str(sum(terms))


PRETRAIN_TASKS = {
    "copy": Task("copy", "c", copy_task, 10),
    "reverse": Task("reverse", "r", reverse_task, 10),
    "count": Task("count", "n", count_task, 3),
    "add": Task("add", "a", add_task, 5),
    "add_steps": Task("add_steps", "s", add_steps_task, 40, steps=True),
}

TARGET_TASKS = {
    "chain_steps": Task("chain_steps", "t", chain_steps_task, 28, steps=True),
    "chain_direct": Task("chain_direct", "u", chain_direct_task, 5),
}

TASKS = {**PRETRAIN_TASKS, **TARGET_TASKS}


def examples(tasks: list[str], n: int, seed: int) -> list[dict[str, str]]:
    """``n`` examples cycling through ``tasks`` (equal shares), from one seeded RNG."""
    rng = random.Random(seed)
    return [TASKS[tasks[i % len(tasks)]].example(rng) for i in range(n)]


def held_out(task: str, n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct test examples of ``task``, preferring prompts not in ``exclude`` (the training prompts).

    A task whose whole input space was trained on (``add``: 1,000 prompts) cannot have unseen prompts;
    its test set is then topped up with seen ones, where exact match measures the skill as learned.
    """
    rng = random.Random(10_000 + seed)
    exclude = set(exclude or ())
    unseen, seen, drawn = [], [], set()
    for _ in range(200 * n):
        if len(unseen) == n:
            break
        row = TASKS[task].example(rng)
        if row["prompt"] in drawn:
            continue
        drawn.add(row["prompt"])
        (seen if row["prompt"] in exclude else unseen).append(row)
    return (unseen + seen)[:n]


def char_tokenizer():
    """A character-level tokenizer over the tasks' alphabet (one id per character), built locally."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ALPHABET)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>",
    )
