"""When to use a Triton kernel instead of its torch reference.

``FTPLUGINS_KERNELS`` chooses:

* ``auto`` (default; ``on`` is the same): on CUDA tensors, the kernels that measured faster than their torch
  reference on a GPU (BENCHMARKS.md, "Kernels on a GPU"); the others use the reference;
* ``all``: every Triton kernel on CUDA tensors (to test or time a kernel that is not on by default);
* ``off``: the torch references everywhere.

``TRITON_INTERPRET=1`` runs every kernel on the CPU through Triton's interpreter (slowly): used by the tests.
"""

from __future__ import annotations

import importlib.util
import os

OFF = ("off", "0", "false", "no")


def kernel_mode() -> str:
    """``auto``, ``all`` or ``off`` from ``FTPLUGINS_KERNELS`` (unknown values are refused by name)."""
    value = os.environ.get("FTPLUGINS_KERNELS", "auto").strip().lower()
    if value in OFF:
        return "off"
    if value in ("auto", "on", "1", "true", "yes", ""):
        return "auto"
    if value == "all":
        return "all"
    raise ValueError(f"FTPLUGINS_KERNELS={value!r}: use auto (default), all or off.")


def kernels_enabled() -> bool:
    """``FTPLUGINS_KERNELS=off`` forces the torch references everywhere."""
    return kernel_mode() != "off"


def triton_available() -> bool:
    """Triton and the optional kernel distribution (``pip install ./kernels``: ``ftplugins_kernels``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("triton", "ftplugins_kernels"))


def interpreting() -> bool:
    """``TRITON_INTERPRET=1`` runs Triton kernels on the CPU (slowly): used by the tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors, faster_on_gpu: bool = True) -> bool:
    """Whether a kernel call on ``tensors`` should go to Triton.

    ``faster_on_gpu`` is the kernel's measured verdict against its reference; a kernel that lost is used on
    CUDA only under ``FTPLUGINS_KERNELS=all``.
    """
    mode = kernel_mode()
    if mode == "off" or not triton_available():
        return False
    if interpreting():
        return True
    return all(t.is_cuda for t in tensors) and (faster_on_gpu or mode == "all")
