"""Several short pre-training examples per batch row, each still seen alone.

The `mid` corpus mixes 10- and 94-character examples, so a random batch padded to its longest row spends most of its
compute on padding; grouping batches by length instead made each batch one task and stalled the loss (issue #20).
Packing keeps random batches: examples are packed best-fit-decreasing into rows of at most ``max_length`` tokens, and
each row's position ids restart at every example with no attention mask, from which transformers builds a
block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``). Every example then gets exactly the
logits it would get alone (tested), a row holds about ``max_length / mean length`` examples, and a step costs what a
padded step of the same shape costs. The loss is TRL's (completion tokens only, averaged over the batch's tokens).
"""

from __future__ import annotations

from typing import Any


def tokenized(row: dict[str, str], tokenizer) -> tuple[list[int], list[int]]:
    """``prompt + completion + EOS`` as ids, and labels that are -100 on the prompt (TRL's completion-only loss)."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    whole = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
    if whole[:len(prompt)] != prompt:
        raise ValueError(f"the completion of {row['prompt']!r} does not start at a token boundary; packing needs it")
    ids = whole + [tokenizer.eos_token_id]
    return ids, [-100] * len(prompt) + ids[len(prompt):]


def pack(rows: list[dict[str, str]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """Rows of ``input_ids``/``labels``/``seq_lengths`` (TRL's packed-row columns), best fit decreasing: longest
    examples first, each into the row with the least room that still fits it (deterministic: ties keep order)."""
    examples = [tokenized(row, tokenizer) for row in rows]
    too_long = [len(ids) for ids, _ in examples if len(ids) > max_length]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than max_length={max_length} (longest "
                         f"{max(too_long)}); raise max_length")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    packed: list[list[int]] = []  # example indices per row
    by_room: list[list[int]] = [[] for _ in range(max_length + 1)]  # room left -> rows with that room
    for i in order:
        size = len(examples[i][0])
        room = next((r for r in range(size, max_length + 1) if by_room[r]), None)
        if room is None:
            packed.append([])
            row, room = len(packed) - 1, max_length
        else:
            row = by_room[room].pop()
        packed[row].append(i)
        by_room[room - size].append(row)
    return [{"input_ids": [t for i in members for t in examples[i][0]],
             "labels": [t for i in members for t in examples[i][1]],
             "seq_lengths": [len(examples[i][0]) for i in members]} for members in packed]


class PackedCollator:
    """TRL's collator (padding, labels, position ids restarting at each packed example) without the attention mask,
    so that the model masks attention between the examples of a row instead of across them."""

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(rows)
        if "seq_lengths" in rows[0]:  # packed training rows; unpacked ones (the held-out curve's) keep their mask
            batch.pop("attention_mask", None)
        return batch
