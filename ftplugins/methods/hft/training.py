"""The torch side of HFT: applying a draw (requires_grad) and re-targeting the optimizer to it."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ftplugins.errors import FtpluginsError

from .selection import epoch_seed, select


def apply_selection(model: nn.Module, trainable: dict[str, bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(trainable[name])


def draw(model: nn.Module, seed: int, epoch: int = 0) -> dict[str, bool]:
    trainable = select(model, epoch_seed(seed, epoch))
    apply_selection(model, trainable)
    return trainable


def _unwrap(optimizer: Any) -> Any:
    for _ in range(4):  # Accelerate's AcceleratedOptimizer holds the torch optimizer in .optimizer
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def retarget(optimizer: Any, model: nn.Module, decay_names: set[str]) -> None:
    """Make the Trainer's two param groups (decay, no decay) hold exactly the trainable parameters.

    Edited in place, so the learning-rate scheduler and Accelerate's wrapper stay valid. Tensors that
    stay trainable keep their Adam state (moments, step); tensors that become frozen lose it; newly
    trainable tensors start with fresh state (torch's AdamW creates it at their first update).
    """
    optimizer = _unwrap(optimizer)
    groups = optimizer.param_groups
    if len(groups) != 2:
        raise FtpluginsError(
            f"hft_redraw='epoch' re-targets the Trainer's own optimizer (2 param groups: decay, no decay); this "
            f"optimizer has {len(groups)} group(s). Use hft_redraw='stage' with a custom optimizer."
        )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    wanted = {id(p) for _, p in named}
    for param in list(optimizer.state):
        if id(param) not in wanted:
            del optimizer.state[param]
    groups[0]["params"] = [p for n, p in named if n in decay_names]
    groups[1]["params"] = [p for n, p in named if n not in decay_names]


def epoch_in_progress(epoch: float) -> int:
    """Index of the epoch a checkpoint was saved in (``state.epoch`` 1.0 = the end of epoch 0)."""
    return max(0, math.ceil(float(epoch) - 1e-6) - 1)
