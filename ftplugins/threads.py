"""How many CPU threads a training process uses.

torch's default (one intra-op thread per core) makes the tiny models of the quick start, the recipes
and the tests 14–25× slower on 2 cores than one thread does: each matmul is too small to split, and
the threads spend their time waiting for each other (and for the other processes of a DDP run). For
real models on a CPU more threads do help; choose them with ``OMP_NUM_THREADS``, which ftplugins
always respects.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: Below this many parameters a CPU run gets one intra-op thread (unless OMP_NUM_THREADS says otherwise).
SMALL_MODEL_PARAMETERS = 20_000_000

_USER_SET = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def user_chose_threads() -> bool:
    return any(os.environ.get(name) for name in _USER_SET)


def limit_threads_for_small_model(model, on_cpu: bool) -> None:
    """One intra-op thread for a small model trained on the CPU, unless the user chose a thread count."""
    import torch

    if not on_cpu or user_chose_threads() or model is None or torch.get_num_threads() == 1:
        return
    parameters = sum(p.numel() for p in model.parameters())
    if parameters < SMALL_MODEL_PARAMETERS:
        logger.info("ftplugins: %s parameters on the CPU: one intra-op thread (set OMP_NUM_THREADS to choose)",
                    f"{parameters:,}")
        torch.set_num_threads(1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for the block (unless the user chose a count); restores torch's setting after."""
    import torch

    before = torch.get_num_threads()
    if not user_chose_threads():
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_on_cpu(args) -> bool:
    """Whether training will run on the CPU (without touching ``args.device``, which sets up distributed state)."""
    import torch

    if getattr(args, "use_cpu", False):
        return True
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
