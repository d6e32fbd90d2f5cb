"""Logging from a callback's ``on_step_end`` without eating the step's own log."""

from __future__ import annotations

from typing import Any


def log_during_step(trainer: Any, logs: dict) -> None:
    """``trainer.log(logs)`` from ``on_step_end`` (or ``on_epoch_end``), keeping ``control.should_log`` as it was.

    ``Trainer.log`` clears ``should_log``; called before the trainer's own logging of the step it would skip that log,
    and when only the main process calls it (the analysis callbacks do), the other ranks still gather the loss there:
    a collective the main process never joins, and DDP hangs or aborts in gloo."""
    should_log = trainer.control.should_log
    trainer.log(logs)
    trainer.control.should_log = should_log
