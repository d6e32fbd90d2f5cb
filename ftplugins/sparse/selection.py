"""Selection rules: which entries of each weight tensor train.

A *selection rule* maps the weights being trained (``{name: tensor}``) to, per name, the entries
that train: a boolean mask of the tensor's shape, a tensor of flat indices, or ``None`` for "every
entry" (a dense parameter). :func:`as_indices` normalises any of these to what the engine stores:
sorted, unique ``int64`` flat indices.

Rules that look at one tensor at a time (LIFT, SaRA's threshold) are written as a function of one
weight and lifted with :func:`per_tensor`. Rules that compare entries across tensors (LT-SFT's
global top-K of ``|θ - θ0|``) use :func:`global_topk_indices`, an exact radix select that visits
one tensor at a time instead of concatenating the model's scores (the LT-SFT reference builds a
Python list of every parameter's difference).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch

#: ``rule(weights) -> {name: bool mask | flat indices | None}``; see the module docstring.
SelectionRule = Callable[[Mapping[str, torch.Tensor]], Mapping[str, "torch.Tensor | None"]]


def as_indices(
    selected: torch.Tensor | None, shape: torch.Size | tuple[int, ...], name: str = "tensor"
) -> torch.Tensor | None:
    """Sorted unique ``int64`` flat indices from a boolean mask or an index tensor (``None`` stays ``None``)."""
    if selected is None:
        return None
    numel = 1
    for dim in shape:
        numel *= int(dim)
    if selected.dtype == torch.bool:
        if selected.numel() != numel:
            raise ValueError(f"selection mask for {name} has {selected.numel()} entries; the tensor has {numel} "
                             f"(shape {tuple(shape)})")
        return selected.reshape(-1).nonzero().squeeze(1)  # nonzero() is sorted
    if selected.is_floating_point() or selected.is_complex():
        raise ValueError(f"selection for {name} must be a boolean mask or integer flat indices, got {selected.dtype}")
    indices = torch.unique(selected.reshape(-1).to(torch.int64), sorted=True)
    if indices.numel() and (indices[0] < 0 or indices[-1] >= numel):
        raise ValueError(f"selection for {name} has flat indices outside [0, {numel}) (shape {tuple(shape)})")
    return indices


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat indices of the ``k`` largest entries of ``scores`` (any shape)."""
    flat = scores.reshape(-1)
    k = max(0, min(int(k), flat.numel()))
    if k == flat.numel():
        return torch.arange(k, device=scores.device)
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    return torch.topk(flat, k, sorted=False).indices.sort().values


def per_tensor(
    rule: Callable[..., torch.Tensor | None], names: Collection[str] | None = None, named: bool = False
) -> SelectionRule:
    """A selection rule that applies ``rule(weight) -> mask | indices | None`` to each tensor alone
    (``rule(name, weight)`` when ``named``: a rule that draws at random seeds itself by the name).

    Only the tensors in ``names`` (default: all) go through ``rule``; the others get ``None`` (train
    every entry). The result is computed lazily, one tensor when the engine asks for it, so that at
    most one tensor's scores and mask exist at a time (a model's worth of boolean masks is 1 byte
    per weight: 85 MB for an 85M model, more than the whole compact state of a LoRA-sized budget).
    """

    def select_each(weights: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor | None]:
        return LazySelection(rule, weights, None if names is None else frozenset(names), named)

    return select_each


class LazySelection(Mapping):
    """``{name: rule(weights[name])}``, each value computed (without grad) when it is looked up."""

    def __init__(self, rule: Callable[..., torch.Tensor | None], weights: Mapping[str, torch.Tensor],
                 names: frozenset[str] | None, named: bool = False) -> None:
        self._rule, self._weights, self._names, self._named = rule, weights, names, named

    def __getitem__(self, name: str) -> torch.Tensor | None:
        weight = self._weights[name]
        if self._names is not None and name not in self._names:
            return None
        with torch.no_grad():
            return self._rule(name, weight.detach()) if self._named else self._rule(weight.detach())

    def __contains__(self, name: object) -> bool:  # Mapping's default would compute the value
        return name in self._weights

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


# --- exact global top-k without concatenation ----------------------------------------------------

_Scores = Mapping[str, "torch.Tensor | Callable[[], torch.Tensor]"]


def _ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit keys (as int64) whose integer order is the float order of ``scores``.

    The IEEE bits of a non-negative float32 already sort as integers; for negative floats the
    magnitude bits are flipped so that larger magnitudes sort lower. Adding 2**31 makes the keys
    non-negative so that they can be cut into 8-bit digits from the top.
    """
    values = scores.detach().reshape(-1).to(torch.float32)
    if torch.isnan(values).any():
        raise ValueError("global top-k scores contain NaN")
    bits = values.view(torch.int32).to(torch.int64)
    keys = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return keys + 2**31


def global_topk_indices(scores: _Scores, k: int) -> dict[str, torch.Tensor]:
    """The ``k`` largest entries over all tensors of ``scores``, as sorted flat indices per name.

    ``scores`` maps names to tensors, or to zero-argument functions returning them (so that scores
    such as ``|θ - θ0|`` are computed one tensor at a time and never held all at once). Exact: a
    radix select over the float32 bit patterns, 8 bits per pass (4 histogram passes + 1 selection
    pass over the tensors, each O(numel) and vectorised). Ties at the threshold are taken in the
    order of ``scores`` and, within a tensor, by flat index, so the result is deterministic.
    """

    def get(name):
        value = scores[name]
        return value() if callable(value) else value

    names = list(scores)
    total = 0
    for name in names:
        total += get(name).numel()
    k = max(0, min(int(k), total))
    if k == total or k == 0:
        out = {}
        for name in names:
            tensor = get(name)
            out[name] = (torch.arange(tensor.numel(), device=tensor.device) if k else
                         torch.empty(0, dtype=torch.int64, device=tensor.device))
        return out

    prefix, remaining = 0, k  # remaining: how many entries still to take among those matching `prefix`
    for shift in (24, 16, 8, 0):
        hist = None
        for name in names:
            keys = _ordered_keys(get(name))
            if shift < 24:
                keys = keys[(keys >> (shift + 8)) == prefix]
            counts = torch.bincount(((keys >> shift) & 0xFF), minlength=256).cpu()
            hist = counts if hist is None else hist + counts
        at_least = hist.flip(0).cumsum(0)  # at_least[j]: entries whose digit is >= 255 - j
        j = int(torch.nonzero(at_least >= remaining)[0])
        digit = 255 - j
        remaining -= int(at_least[j] - hist[digit])  # the entries with a larger digit are all taken
        prefix = (prefix << 8) | digit

    threshold, ties_left = prefix, remaining
    out = {}
    for name in names:
        keys = _ordered_keys(get(name))
        chosen = keys > threshold
        if ties_left > 0:
            ties = torch.nonzero(keys == threshold).squeeze(1)[:ties_left]
            ties_left -= ties.numel()
            chosen[ties] = True
        out[name] = chosen.nonzero().squeeze(1)
    return out
