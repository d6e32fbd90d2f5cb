"""What a command prints: what the user needs, once.

Under DDP every process runs the same code, so every warning of the stack was printed once per process. Processes
other than the first (global rank > 0, as set by ``accelerate launch`` / ``torchrun``) keep their errors and drop
warnings and info: rank 0 prints them once for all.
"""

from __future__ import annotations

import logging
import os
import warnings

#: Loggers of the stack whose warnings every process would repeat.
STACK_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "ftplugins")


def replica_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched distributed)."""
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def quiet_replicas() -> None:
    """On a process of rank > 0: no Python warnings, and only errors from the stack's loggers. (The Trainer resets
    transformers' level to ``log_level_replica`` on such processes; ``ftplugins.train`` makes that ``error`` unless
    the user chose a level.)"""
    if replica_rank() == 0:
        return
    warnings.simplefilter("ignore")
    for name in STACK_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ignore_trl_gradient_checkpointing_default() -> None:
    """Drop the FutureWarning transformers 5 gives for TRL's own default (``SFTConfig.gradient_checkpointing=True``
    under its old name): not the user's doing, and nothing they could change. Call it inside the caller's
    ``warnings.catch_warnings()`` to keep it local."""
    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
