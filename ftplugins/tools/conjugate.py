"""Conjugate prompting: ask in a form that is far from the fine-tuning data, map the answer back.

Kotha et al., "Understanding Catastrophic Forgetting in Language Models via Implicit Inference" (ICLR 2024;
kothasuhas/understanding-forgetting): fine-tuning can suppress a capability without erasing it. Transforming the
whole prompt with a meaning-preserving map T (translation, a cipher, leetspeak, pig latin) moves it away from the
fine-tuning distribution; the model answers in T's form and the answer is mapped back with T⁻¹ before judging. The
gap between accuracy on T(prompt) and on the prompt measures how much of the capability is still there.

Transforms (each exact: ``decode(encode(x)) == x`` for every string x, tested):

* ``identity`` -- the baseline (reproduces plain evaluation);
* ``cipher`` -- a letter substitution; default ROT13 (digits and punctuation untouched, so numbers keep their
  meaning); :class:`CharTable` takes any injective character table;
* ``leetspeak`` -- a→4, e→3, i→1, o→0, s→5, t→7 (lower case). To be invertible the table is completed to a
  permutation, so those digits become the letters (4→a, ...): prefer it for text, not arithmetic;
* ``pig_latin`` -- each letter run w = consonant cluster c + rest r becomes ``r-cay`` (``apple`` → ``apple-ay``,
  ``string`` → ``ing-stray``); hyphens of the text are doubled so the map stays invertible;
* ``language`` -- a synthetic language by word substitution: every word (2+ letters) of a vocabulary swaps with a
  pronounceable pseudo-word (seeded; case pattern kept); built from the evaluation prompts by
  :func:`synthetic_language`.

A translation table into a natural language is a :class:`WordSwap` over a word list you provide. Evaluation:
:func:`conjugate_eval` (Python) and ``ftplugins eval conjugate`` (CLI): accuracy of a fine-tuned model and its base
on the original and on each conjugate prompt, same examples throughout.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

LETTERS = re.compile(r"[A-Za-z]+")


class Transform:
    """A meaning-preserving, invertible rewrite of text: ``decode(encode(x)) == x``."""

    name = "transform"

    def encode(self, text: str) -> str:
        raise NotImplementedError

    def decode(self, text: str) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<conjugate transform {self.name}>"


class Identity(Transform):
    name = "identity"

    def encode(self, text: str) -> str:
        return text

    def decode(self, text: str) -> str:
        return text


class CharTable(Transform):
    """A character substitution, completed to a permutation of the characters it mentions (so it inverts exactly):
    a value that is not itself a key maps back to the start of its chain (``{a: 4}`` also maps 4 to a)."""

    def __init__(self, table: Mapping[str, str], name: str = "cipher"):
        if any(len(k) != 1 or len(v) != 1 for k, v in table.items()):
            raise FtpluginsError(f"conjugate {name}: every key and value must be one character; got "
                                 f"{[(k, v) for k, v in table.items() if len(k) != 1 or len(v) != 1][:3]}.")
        inverse: dict[str, str] = {}
        for key, value in table.items():
            if value in inverse:
                raise FtpluginsError(f"conjugate {name}: {inverse[value]!r} and {key!r} both map to {value!r}; a "
                                     "table must be injective to be invertible.")
            inverse[value] = key
        forward = dict(table)
        for value in set(inverse) - set(table):
            start = value
            while start in inverse:
                start = inverse[start]
            forward[value] = start
        self.name = name
        self._encode = str.maketrans(forward)
        self._decode = str.maketrans({v: k for k, v in forward.items()})

    def encode(self, text: str) -> str:
        return text.translate(self._encode)

    def decode(self, text: str) -> str:
        return text.translate(self._decode)


def cipher(shift: int = 13) -> CharTable:
    """A Caesar shift of the letters (ROT13 by default); case kept, everything else untouched."""
    lower, upper = string.ascii_lowercase, string.ascii_uppercase
    shift %= 26
    table = {c: lower[(i + shift) % 26] for i, c in enumerate(lower)}
    table.update({c: upper[(i + shift) % 26] for i, c in enumerate(upper)})
    return CharTable(table, name="cipher" if shift == 13 else f"cipher{shift}")


def leetspeak() -> CharTable:
    return CharTable({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}, name="leetspeak")


class PigLatin(Transform):
    """``r-cay`` for each letter run ``c + r`` (c: the leading consonants, possibly empty); text hyphens doubled."""

    name = "pig_latin"
    _WORD = re.compile(r"[A-Za-z]+")
    _VOWELS = set("aeiouAEIOU")
    _BACK = re.compile(r"--|([A-Za-z]*)-([A-Za-z]*)ay(?![A-Za-z])")

    def encode(self, text: str) -> str:
        pieces, last = [], 0
        for match in self._WORD.finditer(text):
            pieces.append(text[last:match.start()].replace("-", "--"))
            word = match.group()
            cut = next((i for i, c in enumerate(word) if c in self._VOWELS), len(word))
            pieces.append(f"{word[cut:]}-{word[:cut]}ay")
            last = match.end()
        pieces.append(text[last:].replace("-", "--"))
        return "".join(pieces)

    def decode(self, text: str) -> str:
        return self._BACK.sub(lambda m: "-" if m.group() == "--" else m.group(2) + m.group(1), text)


class WordSwap(Transform):
    """Swap words with their counterparts (an involution on lower-case words of 2+ letters, so it inverts
    exactly); Title and UPPER case words keep their case pattern, other mixed-case words are left alone."""

    def __init__(self, pairs: Mapping[str, str], name: str = "language"):
        swap: dict[str, str] = {}
        for word, other in pairs.items():
            word, other = word.lower(), other.lower()
            for w in (word, other):
                if len(w) < 2 or not w.isascii() or not w.isalpha():
                    raise FtpluginsError(f"conjugate {name}: {w!r} is not a word of 2+ ASCII letters; the swap "
                                         "works on letter runs.")
            if word == other or swap.get(word, other) != other or swap.get(other, word) != word:
                raise FtpluginsError(f"conjugate {name}: {word!r} <-> {other!r} clashes with another pair; every "
                                     "word may appear in one pair only.")
            swap[word], swap[other] = other, word
        self.name, self.swap = name, swap

    def _one(self, match: re.Match) -> str:
        word = match.group()
        if len(word) < 2:
            return word
        if word.islower():
            shape = str.lower
        elif word[0].isupper() and word[1:].islower():
            shape = str.capitalize
        elif word.isupper():
            shape = str.upper
        else:
            return word
        other = self.swap.get(word.lower())
        return word if other is None else shape(other)

    def encode(self, text: str) -> str:
        return LETTERS.sub(self._one, text)

    decode = encode  # an involution


_ONSETS = "b c d f g h k l m n p r s t v z br dr gr kr pl st tr".split()
_NUCLEI = "a e i o u".split()


def synthetic_language(texts: Iterable[str], seed: int = 0, name: str = "language") -> WordSwap:
    """A :class:`WordSwap` that gives every word (2+ letters) of ``texts`` a pseudo-word of about its length that
    is neither a word of ``texts`` nor another pseudo-word (seeded, so the same texts give the same language)."""
    words = sorted({w.lower() for text in texts for w in LETTERS.findall(text) if len(w) >= 2})
    rng, taken, pairs = random.Random(seed), set(words), {}
    for word in words:
        for attempt in range(1000):
            syllables = max(1, round(len(word) / 2.5)) + attempt // 20  # longer when short ones run out
            pseudo = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(syllables))
            if pseudo not in taken:
                break
        else:  # pragma: no cover - 1000 clashes in a row would need an enormous vocabulary
            raise FtpluginsError(f"conjugate {name}: no free pseudo-word for {word!r}; use fewer words.")
        taken.add(pseudo)
        pairs[word] = pseudo
    return WordSwap(pairs, name=name)


BUILTIN = ("identity", "cipher", "leetspeak", "pig_latin", "language")


def get_transform(name: str | Transform, texts: Sequence[str] = (), seed: int = 0) -> Transform:
    """A transform by name (``language`` is built from ``texts``), or the transform itself."""
    if isinstance(name, Transform):
        return name
    makers = {"identity": Identity, "cipher": cipher, "rot13": cipher, "leetspeak": leetspeak, "leet": leetspeak,
              "pig_latin": PigLatin, "piglatin": PigLatin,
              "language": lambda: synthetic_language(texts, seed=seed)}
    if name not in makers:
        raise FtpluginsError(f"conjugate: no transform {name!r}; built in: {', '.join(BUILTIN)} (or pass a "
                             "Transform object in Python).")
    return makers[name]()


def conjugate_eval(models: Mapping[str, Any], tokenizer: Any, rows: Sequence[dict],
                   transforms: Sequence[str | Transform] = ("cipher", "leetspeak", "pig_latin", "language"), *,
                   judge: Any = "auto", template: str = "{prompt}", max_new_tokens: int = 32, batch_size: int = 16,
                   seed: int = 0) -> dict:
    """Accuracy of each model (e.g. ``{"finetuned": ft, "base": base}``) on the original prompts and on each
    conjugate: ``metrics["<model>/<transform>"]`` and ``metrics["<model>/best_conjugate_gain"]`` (best conjugate
    accuracy minus the original's). The whole prompt (``template`` with ``{prompt}`` replaced) is encoded; the first
    line of the answer is decoded and judged against the gold answer. Every transform sees the same rows."""
    from ftplugins.eval.generation import generate_texts
    from ftplugins.eval.infusion import resolve
    from ftplugins.eval.rows import load_rows

    rows = load_rows(rows, ("prompt", "answer"), what="conjugate")
    judge_fn = resolve(judge, option="conjugate judge")
    prompts = [template.replace("{prompt}", str(r["prompt"])) for r in rows]
    names = ["identity", *[t for t in transforms if t != "identity"]]
    chosen = [get_transform(t, prompts, seed) for t in names]
    metrics: dict[str, float] = {}
    records = []
    for model_name, model in models.items():
        for transform in chosen:
            answers = generate_texts(model, tokenizer, [transform.encode(p) for p in prompts], n=1,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, stop=("\n",))
            marks = []
            for row, prompt, (raw,) in zip(rows, prompts, answers):
                decoded = transform.decode(raw.strip())
                ok = bool(judge_fn(decoded, str(row["answer"]), row))
                marks.append(ok)
                records.append({"model": model_name, "transform": transform.name, "prompt": transform.encode(prompt),
                                "raw_answer": raw.strip(), "answer": decoded, "gold": str(row["answer"]),
                                "correct": ok})
            metrics[f"{model_name}/{transform.name}"] = sum(marks) / len(marks)
        conjugates = [metrics[f"{model_name}/{t.name}"] for t in chosen if t.name != "identity"]
        if conjugates:
            metrics[f"{model_name}/best_conjugate_gain"] = max(conjugates) - metrics[f"{model_name}/identity"]
    return {"metrics": metrics, "transforms": [t.name for t in chosen], "rows": records}
