"""Optional fused kernels, each beside a pure-torch reference of the same signature.

Every kernel is reached through a dispatcher that uses Triton on CUDA tensors when the kernels are
installed and the kernel measured faster than its reference on a GPU, and the torch reference otherwise
(CPU, no kernels, ``FTPLUGINS_KERNELS=off``); ``FTPLUGINS_KERNELS=all`` uses every kernel (see ``dispatch``).
Tests compare each Triton kernel with its reference on CPU under ``TRITON_INTERPRET=1``.

The Triton kernels themselves are the optional distribution in the repository's top-level ``kernels/`` folder
(DESIGN.md's layout), installed with ``pip install ./kernels``, under the import name ``ftplugins_kernels``: a
top-level module named ``kernels`` would shadow the Hugging Face ``kernels`` package that transformers probes
for, ``ftplugins_kernels`` shadows nothing. The references and dispatchers stay here, so that ftplugins works
without them.
"""

from .dispatch import kernel_mode, kernels_enabled, use_triton

__all__ = ["kernel_mode", "kernels_enabled", "use_triton"]
