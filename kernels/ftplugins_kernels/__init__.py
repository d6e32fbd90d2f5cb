"""Optional Triton kernels for ftplugins; each is tested against its torch reference in ``ftplugins.kernels``.

Import the kernel modules themselves (``ftplugins_kernels.sparse_adamw_triton``, ...): importing this package
alone does not import Triton.
"""
