"""Optional fused kernels, each beside a pure-torch reference of the same signature.

Every kernel is reached through a dispatcher that uses Triton on CUDA tensors when Triton is
installed and the kernel measured faster than its reference on a GPU, and the torch reference otherwise
(CPU, no Triton, ``FTPLUGINS_KERNELS=off``); ``FTPLUGINS_KERNELS=all`` uses every kernel (see ``dispatch``).
Tests compare each Triton kernel with its reference on CPU under ``TRITON_INTERPRET=1``.

This lives inside the ``ftplugins`` package rather than in a top-level ``kernels/`` folder
(DESIGN.md's layout) because a top-level module named ``kernels`` would shadow the Hugging Face
``kernels`` package that transformers probes for.
"""

from .dispatch import kernel_mode, kernels_enabled, use_triton

__all__ = ["kernel_mode", "kernels_enabled", "use_triton"]
