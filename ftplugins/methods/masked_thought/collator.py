"""The training-time collator of Masked Thought, scoped to training by the plugin's ``phase`` hook.

:class:`MaskedThoughtCollator` wraps the trainer's own collator (TRL builds it; it already holds
-100 on prompt and padding) and corrupts ``input_ids`` of training batches only. It reads the
optimizer step from the trainer, in the main process, which is why the plugin refuses dataloader
worker processes.

Which batches are training batches is decided by the plugin's ``phase`` hook: masking is
on inside ``train()`` and off inside ``evaluate()`` / ``predict()`` (also when they run in the
middle of training). ``model.training`` would not do: the trainer fetches the micro-batches of a
step *before* ``training_step`` calls ``model.train()``, so the batches fetched right after an
evaluation, or before the first step of a model loaded in eval mode, would go unmasked.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

from .masking import mask_response_tokens, ratio_at

STATE_KEY = "masked_thought"


def batch_generator(seed: int, step: int, micro_batch: int, process_index: int) -> torch.Generator:
    """A generator private to one micro-batch of one optimizer step on one process.

    Seeding from the batch's position instead of drawing from the global RNG keeps the rest of
    training (dropout, shuffling) identical to plain SFT and lets a resumed run redraw the same
    masks. The key is hashed so that neighbouring positions get unrelated streams.
    """
    key = f"masked_thought:{seed}:{step}:{micro_batch}:{process_index}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
    return torch.Generator().manual_seed(value)


class MaskedThoughtCollator:
    """Calls ``collator``, then masks response input tokens of training batches (labels unchanged).

    Args:
        collator: the wrapped collator (the trainer's).
        run: the run; ``run.trainer`` gives the optimizer step and ``run.args`` the seed.
        options: the plugin's :class:`MaskedThoughtOptions`.
        mask_token_id: the mask token (variant ``mask_token``), or
        vocab_size: the range of random ids (variant ``random``).
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        run: Any,
        options: Any,
        *,
        mask_token_id: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.collator = collator
        self.run = run
        self.options = options
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        self.training = False
        self._position: tuple[int, int] | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if not self.training:
            return batch
        step, micro_batch = self._next_position()
        opts = self.options
        ratio = ratio_at(step, self.run.trainer.state.max_steps, opts.masked_thought_ratio, opts.masked_thought_warmup)
        if ratio == 0:
            return batch  # plain SFT, and no random number drawn
        args = self.run.args
        generator = batch_generator(args.seed, step, micro_batch, args.process_index)
        input_ids, masked = mask_response_tokens(
            batch["input_ids"],
            batch["labels"],
            ratio,
            generator,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
        )
        batch["input_ids"] = input_ids
        if opts.masked_thought_drop_attention:
            if "attention_mask" not in batch:
                raise FtpluginsError(
                    "masked_thought_drop_attention=True needs an attention_mask in each batch, and this collator "
                    "builds none (padding-free or packed batches); set masked_thought_drop_attention=False."
                )
            batch["attention_mask"] = batch["attention_mask"].masked_fill(masked, 0)
        return batch

    def _next_position(self) -> tuple[int, int]:
        """(optimizer step, micro-batch index within it) of the training batch being collated.

        The step cannot simply be read when a batch is collated: accelerate's dataloader collates
        one batch ahead, so the first micro-batch of step s is built while ``global_step`` is still
        s - 1. We therefore count micro-batches of ``gradient_accumulation_steps`` per step and
        re-synchronise with ``global_step`` whenever it is ahead of the count: at the first batch of
        a ``train()`` call (a resumed run starts at its checkpoint's step) and after an epoch whose
        last step had fewer micro-batches.
        """
        global_step = self.run.trainer.state.global_step
        if self._position is None or global_step > self._position[0]:
            self._position = (global_step, 0)
        else:
            step, micro_batch = self._position
            micro_batch += 1
            if micro_batch == self.run.args.gradient_accumulation_steps:
                step, micro_batch = step + 1, 0
            self._position = (step, micro_batch)
        return self._position

    @contextlib.contextmanager
    def masking(self, enabled: bool) -> Iterator[None]:
        """Mask training batches inside the block (``enabled``) or never (evaluation)."""
        saved = self.training, self._position
        self.training = enabled
        if enabled:
            self._position = None
        try:
            yield
        finally:
            self.training, self._position = saved
