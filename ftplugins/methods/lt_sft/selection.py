"""LT-SFT's selection rule: the K entries that moved most in phase 1, globally across tensors.

Ansell et al. (ACL 2022), §3: after full fine-tuning from θ0 to θ1, the mask keeps the K entries with
the largest |θ1 - θ0| over the whole model (one global threshold, not a per-tensor quota). The
engine's exact radix select (:func:`ftplugins.sparse.selection.global_topk_indices`) finds them one
tensor at a time; the reference sorts a Python list of every difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

import torch

from ftplugins.sparse.selection import global_topk_indices

#: A difference θ1 - θ0, or a zero-argument function computing it (one tensor at a time).
Diff = Union[torch.Tensor, Callable[[], torch.Tensor]]


def select_indices(diff_by_name: Mapping[str, Diff], k: int) -> dict[str, torch.Tensor]:
    """Sorted flat indices, per name, of the ``k`` entries with the largest ``|diff|`` over all tensors.

    Values may be tensors or zero-argument functions returning them (computed one tensor at a time).
    Ties at the threshold go to earlier names, then lower flat indices (the engine's rule).
    """

    def magnitude(value):
        return lambda: (value() if callable(value) else value).detach().abs()

    return global_topk_indices({name: magnitude(value) for name, value in diff_by_name.items()}, k)


def select(diff_by_name: Mapping[str, Diff], k: int) -> dict[str, torch.Tensor]:
    """LT-SFT's mask: per name, a boolean tensor of the diff's shape, ``True`` on the global top-``k`` of ``|diff|``."""
    out = {}
    for name, indices in select_indices(diff_by_name, k).items():
        value = diff_by_name[name]
        shape = (value() if callable(value) else value).shape
        mask = torch.zeros(shape, dtype=torch.bool, device=indices.device)
        mask.view(-1)[indices] = True
        out[name] = mask
    return out
