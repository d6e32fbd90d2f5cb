"""Trainer-side glue of HFT's per-epoch redraw: a callback, and the draw re-made before a resumed optimizer loads."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError

from .training import draw, epoch_in_progress, retarget

STATE_KEY = "hft"


def redraw(run: Any, trainer: Any, epoch: int) -> None:
    """Draw the frozen half of ``epoch`` and re-target the trainer's optimizer (no-op if already drawn)."""
    state = run.state.get(STATE_KEY)
    if state is None:
        raise FtpluginsError("hft: the trainer was not prepared by the hft plugin; build it with ftplugins.compose")
    if state["epoch"] == epoch:
        return
    model = trainer.model
    state["trainable"] = draw(model, state["seed"], epoch)
    state["epoch"] = epoch
    if trainer.optimizer is not None:
        retarget(trainer.optimizer, model, set(trainer.get_decay_parameter_names(model)))


class HftRedrawCallback(TrainerCallback):
    """At every epoch start, the draw of that epoch (``hft_redraw='epoch'``)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def on_epoch_begin(self, args, state, control, **kwargs):
        redraw(self.run, self.run.trainer, int(math.floor(float(state.epoch or 0) + 1e-6)))


def redraw_for_checkpoint(run: Any, trainer: Any, checkpoint: str) -> None:
    """Before a checkpoint's optimizer state is loaded, re-make the draw it was saved under (its epoch's)."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if os.path.isfile(path):
        with open(path) as handle:
            epoch = json.load(handle).get("epoch") or 0
        redraw(run, trainer, epoch_in_progress(epoch))
