"""A byte-level BPE tokenizer trained locally on the pre-training corpus (the `mid` decoder's).

Digits are split one per token before BPE (column arithmetic writes digit by digit), the rest is
GPT-2-style byte-level BPE, so every text encodes (no ``<unk>``) and decodes back exactly, which
exact-match scoring needs. Training is deterministic: the same texts give the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.quality.tasks import SPECIAL_TOKENS


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A ``PreTrainedTokenizerFast`` of ``vocab_size`` ids (special tokens of :mod:`.tasks` first) fit to ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>",
    )
