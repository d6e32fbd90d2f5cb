"""The shared sparse fine-tuning engine: selection rules, a compact optimizer, sparse deltas.

One engine serves every method that trains a subset of the entries of the base weights (LIFT,
LT-SFT, SaRA, grafting, ...). A method contributes a *selection rule*: a function from the weights
to, per tensor, the flat indices that train. The engine does the rest:

* :mod:`~ftplugins.sparse.selection` - turning masks / scores into sorted index sets, per-tensor
  top-k and an exact global top-k (radix select) that never concatenates the model.
* :mod:`~ftplugins.sparse.targets` - which weights a method may train (float weights minus the
  embeddings and the head), one scan for every method.
* :mod:`~ftplugins.sparse.optimizer` - :class:`SparseAdamW`, whose state (Adam moments, fp32 master
  values of low-precision weights, the indices) exists only for selected entries and which never
  keeps a dense gradient for more than one tensor at a time; mask refresh; DDP; exact resume.
* :mod:`~ftplugins.sparse.trainer` - the Trainer-side glue, as hook implementations (gradient-norm
  logging and clipping of compact gradients, keeping DDP's dense buckets away).
* :mod:`~ftplugins.sparse.shards` - FSDP2's row shards: selection on the gathered weight, each process keeps the
  entries (and optimizer state) of its own rows, the delta gathered for the save.
* :mod:`~ftplugins.sparse.delta` - the artifact: a sparse delta (indices + values of W - W0 in
  safetensors) that can be applied, reverted and composed onto a base model.
* :mod:`~ftplugins.sparse.cli` - ``ftplugins delta apply|revert|compose``.

The package's top level imports no torch (the ``ftplugins`` command imports the CLI module); the
names below are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SparseAdamW": "optimizer",
    "around_optimizer": "trainer",
    "sparse_optimizer_of": "trainer",
    "release_grad_hooks": "optimizer",
    "SparseDelta": "delta",
    "apply_delta": "delta",
    "compose_deltas": "delta",
    "delta_from_optimizer": "delta",
    "apply_to_model_dir": "delta",
    "diff_delta": "delta",
    "load_delta": "delta",
    "revert_delta": "delta",
    "save_delta": "delta",
    "save_optimizer_delta": "delta",
    "as_indices": "selection",
    "global_topk_indices": "selection",
    "per_tensor": "selection",
    "topk_indices": "selection",
    "target_weights": "targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
