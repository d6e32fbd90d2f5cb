"""The verbaliser: each label's m vocabulary tokens, checked against the tokenizer before anything trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftplugins.errors import FtpluginsError


@dataclass(frozen=True)
class Verbalizer:
    labels: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]  # [label][mask position]

    @property
    def masks(self) -> int:
        return len(self.token_ids[0])

    def index(self, value: Any, row: int, column: str) -> int:
        """A label value as its class index: a label name, or an index into :attr:`labels`."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.labels):
            return value
        if isinstance(value, str) and value.strip() in self.labels:
            return self.labels.index(value.strip())
        raise FtpluginsError(
            f"pet: example {row} has {column}={value!r}, which is not a verbaliser label {list(self.labels)} (nor an "
            "index into them); fix the label or add 'LABEL:word' to pet_verbalizer."
        )


def token_id(tokenizer: Any, word: str, entry: str) -> int:
    """The one vocabulary id of ``word``: a vocabulary token as written (``##ly``), else a word the tokenizer keeps
    whole. A word it splits is refused: its score would silently be one piece's."""
    vocab = tokenizer.get_vocab()
    if word in vocab:
        return vocab[word]
    pieces = tokenizer.tokenize(word)
    if len(pieces) == 1:
        return tokenizer.convert_tokens_to_ids(pieces[0])
    raise FtpluginsError(
        f"pet_verbalizer {entry!r}: the tokenizer splits {word!r} into {len(pieces)} tokens {pieces}; declare each "
        f"token as a word ('{entry.split(':', 1)[0]}:{' '.join(pieces)}', with one more mask) or choose a word that "
        "is one token."
    )


def build_verbalizer(entries: list[str] | None, tokenizer: Any) -> Verbalizer:
    if not entries:
        raise FtpluginsError("pet needs pet_verbalizer: one 'label:word' entry per class, e.g. "
                             "--pet_verbalizer pos:great neg:terrible")
    labels, ids = [], []
    for entry in entries:
        label, words = entry.split(":", 1)
        labels.append(label.strip())
        ids.append(tuple(token_id(tokenizer, w, entry) for w in words.split()))
    if len({len(t) for t in ids}) != 1:
        counts = {label: len(t) for label, t in zip(labels, ids)}
        raise FtpluginsError(f"pet_verbalizer: every label needs the same number of tokens (one per mask), got "
                             f"{counts}; pad the short ones with a neutral token or shorten the long ones.")
    if len(set(ids)) != len(ids):
        raise FtpluginsError(f"pet_verbalizer {entries}: two labels have the same tokens; they could not be told apart")
    return Verbalizer(tuple(labels), tuple(ids))
