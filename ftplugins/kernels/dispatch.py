"""When to use a Triton kernel instead of its torch reference."""

from __future__ import annotations

import importlib.util
import os


def kernels_enabled() -> bool:
    """``FTPLUGINS_KERNELS=off`` forces the torch references everywhere."""
    return os.environ.get("FTPLUGINS_KERNELS", "on").lower() not in ("off", "0", "false", "no")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """``TRITON_INTERPRET=1`` runs Triton kernels on the CPU (slowly): used by the tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors) -> bool:
    """Whether a kernel call on ``tensors`` should go to Triton."""
    if not kernels_enabled() or not triton_available():
        return False
    return all(t.is_cuda for t in tensors) or interpreting()
