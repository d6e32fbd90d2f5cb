"""Reverse fine-tuning: a few steps back on the pre-training task, from the fine-tuned model and from a control.

Jain et al. (arXiv:2311.12786, "reFT") show that a capability fine-tuning only hid comes back in a few gradient
steps on the original task, far fewer than a model without it needs. Here both runs take the same seeded batches of
the pre-training-task texts (causal-LM loss, AdamW, constant learning rate): one from an exact copy of the
fine-tuned model, one from the control, a freshly initialised model of the same config. A run has *recovered* at
the first step whose held-out loss is within ``tolerance`` of the way from the fine-tuned loss back to the base's.
The analysed models are never changed (the runs train copies).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

from .behaviour import batches, lm_loss


@dataclass
class ReverseRun:
    """Held-out loss before the first step and after each step; the first step that recovered (``None``: never)."""

    losses: list[float] = field(default_factory=list)
    recovered_at: int | None = None

    def as_json(self) -> dict:
        return {"loss": [round(x, 6) for x in self.losses], "steps_to_recover": self.recovered_at}


def fresh_copy(model: Any, device: Any = None) -> Any:
    """A new model of ``model``'s class and config holding a copy of its weights.

    Not ``copy.deepcopy``: a model that went through a Trainer carries an instance ``forward`` bound to the original
    object (accelerate's output conversion), so a deep copy would still run the original's weights.
    """
    clone = type(model)(copy.deepcopy(model.config))
    clone.load_state_dict(model.state_dict())
    parameter = next(model.parameters())
    return clone.to(device or parameter.device, parameter.dtype)


def control_model(like: Any, seed: int = 0) -> Any:
    """A freshly initialised model of ``like``'s class and config (seeded), on its device."""
    torch.manual_seed(seed)
    model = type(like)(copy.deepcopy(like.config))
    return model.to(next(like.parameters()).device)


def reverse_finetune(start: Any, tokenizer: Any, train_texts: Sequence[str], eval_texts: Sequence[str], *, steps: int,
                     threshold: float, learning_rate: float = 1e-3, batch_size: int = 8, seed: int = 0) -> ReverseRun:
    """Train a deep copy of ``start`` for ``steps`` steps; recovered when the held-out loss ≤ ``threshold``."""
    if steps < 1 or not learning_rate > 0:
        raise FtpluginsError(f"reverse fine-tuning: steps={steps}, learning_rate={learning_rate}; expected steps >= 1 "
                             "and a positive learning rate")
    model = fresh_copy(start)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    order = torch.randperm(len(train_texts), generator=torch.Generator().manual_seed(seed)).tolist()
    run = ReverseRun([lm_loss(model, tokenizer, eval_texts)])
    position = 0
    for step in range(1, steps + 1):
        chosen = [train_texts[order[(position + i) % len(order)]] for i in range(min(batch_size, len(order)))]
        position += len(chosen)
        model.train()
        ids, mask = next(batches(tokenizer, chosen, device, batch_size=len(chosen)))
        labels = ids.masked_fill(mask == 0, -100)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.losses.append(lm_loss(model, tokenizer, eval_texts))
        if run.recovered_at is None and run.losses[-1] <= threshold:
            run.recovered_at = step
    if run.losses[0] <= threshold:
        run.recovered_at = 0
    del model
    return run


def recovery_threshold(base_loss: float, tuned_loss: float, tolerance: float = 0.1) -> float:
    """The loss a reverse run must reach: ``tolerance`` of the fine-tuned-to-base gap above the base's loss."""
    return base_loss + tolerance * max(tuned_loss - base_loss, 0.0)
