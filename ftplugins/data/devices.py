"""Where the selection engine computes: this process's CUDA device when there is one, else the CPU.

Under ``accelerate launch`` / ``torchrun`` each process has its own GPU (``LOCAL_RANK``), so "cuda" alone would put
every rank's work on GPU 0. k-means runs on the GPU only with faiss' GPU build (``faiss.get_num_gpus() > 0``); the
``faiss-cpu`` wheel of the ``[data]`` extra has none and runs it on the CPU. OT (torch) and the encoders follow
:func:`compute_device`. ``device`` is the shared ``<plugin>_device`` option: ``auto``, ``cpu``, ``cuda`` or
``cuda:N``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("ftplugins.data")
AUTO = "auto"


def compute_device(requested: str = AUTO) -> Any:
    """The ``torch.device`` for OT and embeddings."""
    import torch

    if requested and requested != AUTO:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            from ftplugins.errors import OptionError

            raise OptionError(f"device {requested!r}: torch sees no CUDA device here; use auto or cpu.")
        return device
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0) or 0)
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def faiss_on_gpu(faiss: Any, requested: str = AUTO) -> bool:
    """Whether faiss k-means runs on a GPU: ``auto`` or ``cuda*`` with faiss' GPU build and a GPU visible."""
    if requested == "cpu":
        return False
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus > 0:
        return True
    if requested != AUTO:
        logger.warning("device %s: this faiss build has no GPU k-means (faiss-cpu); k-means runs on the CPU. "
                       "Install faiss' GPU build (conda: faiss-gpu) to run it on the GPU.", requested)
    return False
