"""Resuming a checkpoint with another number of processes than saved it (2 ranks -> 1, or 1 -> 2).

What carries over, measured (``tests/test_resume_world.py``, DDP on CPU): the weights, the optimizer and the
scheduler are saved whole (not per rank), and the data position is the optimizer step times the global batch, so
with the same global batch (per-device batch x processes x accumulation) a resumed run ends where an uninterrupted
one does, in either direction. What does not: transformers saves one RNG state per rank (``rng_state_<i>.pth``, or
``rng_state.pth`` for one process) and, finding none for the new layout, silently skips them; no re-split could
reproduce an uninterrupted run's streams, so dropout and random plugin draws differ from it after the resume (a
warning says so). With another global batch the data position and the schedule would not match: refused.
The seal (``ftplugins_checkpoint.json``) records the world size and the global batch of the saving run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

from .errors import FtpluginsError

_log = logging.getLogger("ftplugins.resume")


def run_layout(args: Any) -> dict[str, int]:
    """The world size and the global batch of a run's training arguments (what a checkpoint's seal records)."""
    world = int(getattr(args, "world_size", 1) or 1)
    per_device = int(getattr(args, "per_device_train_batch_size", 1) or 1)
    accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    return {"world_size": world, "per_device_train_batch_size": per_device,
            "gradient_accumulation_steps": accumulation, "global_batch_size": per_device * world * accumulation}


def saved_layout(checkpoint: str) -> dict[str, int]:
    """The layout recorded in ``checkpoint``'s seal; for a checkpoint sealed without one, the world size from its
    RNG state files (one per rank) and no global batch."""
    from .checkpoints import SEAL

    try:
        with open(os.path.join(checkpoint, SEAL)) as handle:
            layout = json.load(handle).get("run")
        if layout:
            return layout
    except (OSError, ValueError):
        pass
    ranks = len(glob.glob(os.path.join(checkpoint, "rng_state_*.pth")))
    if ranks:
        return {"world_size": ranks}
    return {"world_size": 1} if os.path.isfile(os.path.join(checkpoint, "rng_state.pth")) else {}


def check_resume_layout(checkpoint: str, args: Any) -> None:
    """Refuse a resume whose global batch differs from the saving run's when the world size changed; warn that the
    per-rank RNG states are not restored when only the world size changed."""
    saved = saved_layout(checkpoint)
    now = run_layout(args)
    if "world_size" not in saved or saved["world_size"] == now["world_size"]:
        return
    before, after = saved["world_size"], now["world_size"]
    if "global_batch_size" in saved and saved["global_batch_size"] != now["global_batch_size"]:
        per_device, remainder = divmod(saved["global_batch_size"], after * now["gradient_accumulation_steps"])
        fix = (f"per_device_train_batch_size {per_device}" if per_device and not remainder else
               "per_device_train_batch_size x gradient_accumulation_steps x processes equal to it")
        raise FtpluginsError(
            f"{checkpoint} was saved by {before} process(es) with a global batch of {saved['global_batch_size']} "
            f"({saved.get('per_device_train_batch_size')} per device x {before} x "
            f"{saved.get('gradient_accumulation_steps')} accumulation); this run has {after} process(es) and a global "
            f"batch of {now['global_batch_size']}, so its data position and schedule would not continue the saved "
            f"run. Keep the global batch: set {fix}.")
    _log.warning(
        "resuming %s, saved by %d process(es), with %d: the weights, optimizer, scheduler and data position carry "
        "over (same global batch); the per-process RNG states do not, so dropout and random draws differ from an "
        "uninterrupted run from here on.", checkpoint, before, after)
