"""The "wrapper": the few MLP units that fine-tuning changed most, and pruning them.

Jain et al. (arXiv:2311.12786) find that fine-tuning mostly learns a thin wrapper on top of capabilities the model
already has: pruning a handful of units brings the pre-trained behaviour back. Their pruning mask is learned; here
the candidates are ranked by how much fine-tuning moved them, which needs no training and is deterministic.

A *unit* is one hidden neuron of a transformer block's MLP: row ``j`` of its input projections (``up_proj`` /
``gate_proj``, ``fc1``, ``c_fc``, BERT's ``intermediate.dense``) and column ``j`` of its output projection
(``down_proj``, ``fc2``, ``c_proj``, BERT's ``output.dense``). Its change score is the Frobenius norm of the
change of those rows and that column together. Pruning a unit:

* ``zero`` (the paper's pruning): its output column is set to 0, so the unit contributes nothing;
* ``revert``: its rows and column get their pre-trained values back (the fine-tuning of that unit is undone).

:func:`pruned` applies either in place and restores the exact weights on exit, so the analysed model is unchanged.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

#: MLP projections by role. The output projection is the one whose *input* is the unit.
OUT_NAMES = r"(mlp\.(down_proj|fc2|c_proj|dense_4h_to_h)|(?<!attention\.)output\.dense)"
IN_NAMES = r"(mlp\.(up_proj|gate_proj|fc1|c_fc|dense_h_to_4h)|intermediate\.dense)"
MODES = ("zero", "revert")


@dataclass(frozen=True)
class Unit:
    """Hidden neuron ``index`` of the MLP whose output projection is ``out`` (a module name)."""

    out: str
    index: int
    score: float = 0.0

    def as_json(self) -> dict:
        return {"mlp": self.out, "index": self.index, "change": round(self.score, 8)}


@dataclass
class Mlp:
    """One MLP: the output projection's name and its input projections' names."""

    out: str
    ins: tuple[str, ...]


def find_mlps(model: Any) -> list[Mlp]:
    """Every MLP block of ``model`` whose projections this module recognises; raises when there is none."""
    modules = dict(model.named_modules())
    mlps = []
    for name, module in modules.items():
        if not re.search(OUT_NAMES + "$", name) or _weight(module) is None:
            continue
        parent = name.rsplit(".", 2)[0] if ".output.dense" in name else name.rsplit(".", 1)[0]
        ins = tuple(other for other in modules if other.startswith(parent + ".") and re.search(IN_NAMES + "$", other)
                    and _weight(modules[other]) is not None)
        mlps.append(Mlp(name, ins))
    if not mlps:
        raise FtpluginsError(f"probe-prune: {type(model).__name__} has no MLP this analysis recognises (looked for "
                             f"output projections matching {OUT_NAMES!r}); its units cannot be ranked or pruned")
    return mlps


def _weight(module: Any) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _is_conv1d(module: Any) -> bool:
    # GPT-2's Conv1D stores its weight as (in_features, out_features), the transpose of nn.Linear's.
    return type(module).__name__ == "Conv1D"


def unit_slices(module: Any, role: str) -> torch.Tensor:
    """A view whose row ``j`` holds unit ``j``'s weights in ``module`` (``role`` "in" or "out")."""
    weight = module.weight
    by_row = (role == "in") != _is_conv1d(module)
    return weight if by_row else weight.T


def rank_units(base: Any, tuned: Any) -> list[Unit]:
    """Every MLP unit of ``tuned`` with its change against ``base``, largest change first (ties: model order)."""
    base_modules, tuned_modules = dict(base.named_modules()), dict(tuned.named_modules())
    units = []
    for mlp in find_mlps(tuned):
        if mlp.out not in base_modules:
            raise FtpluginsError(f"probe-prune: the tuned model has {mlp.out} but the base does not; compare a "
                                 "fine-tune with the model it was trained from")
        squared = None
        for name, role in [(mlp.out, "out")] + [(n, "in") for n in mlp.ins]:
            now, before = unit_slices(tuned_modules[name], role), unit_slices(base_modules[name], role)
            if now.shape != before.shape:
                raise FtpluginsError(f"probe-prune: {name} has shape {tuple(before.shape)} in the base but "
                                     f"{tuple(now.shape)} in the tuned model; compare a fine-tune with its base")
            change = (now.detach().float().cpu() - before.detach().float().cpu()).pow(2).sum(1)
            squared = change if squared is None else squared + change
        units += [Unit(mlp.out, j, float(s)) for j, s in enumerate(squared.sqrt())]
    return sorted(units, key=lambda unit: -unit.score)


@contextlib.contextmanager
def pruned(model: Any, units: Sequence[Unit], mode: str = "zero", base: Any = None) -> Iterator[Any]:
    """``model`` with ``units`` pruned (``zero`` or ``revert`` to ``base``'s weights) inside the block; the exact
    previous weights come back on exit."""
    if mode not in MODES:
        raise FtpluginsError(f"probe-prune: pruning mode {mode!r}: expected one of {MODES}")
    if mode == "revert" and base is None:
        raise FtpluginsError("probe-prune: mode 'revert' needs the base model to copy the units' weights from")
    modules = dict(model.named_modules())
    base_modules = dict(base.named_modules()) if base is not None else {}
    mlps = {mlp.out: mlp for mlp in find_mlps(model)}
    saved: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for unit in units:
                if unit.out not in mlps:
                    raise FtpluginsError(f"probe-prune: no MLP {unit.out!r} in {type(model).__name__}")
                roles = [(unit.out, "out")] + ([(n, "in") for n in mlps[unit.out].ins] if mode == "revert" else [])
                for name, role in roles:
                    rows = unit_slices(modules[name], role)
                    saved.append((rows, unit.index, rows[unit.index].clone()))
                    if mode == "zero":
                        rows[unit.index].zero_()
                    else:
                        rows[unit.index].copy_(unit_slices(base_modules[name], role)[unit.index])
        yield model
    finally:
        with torch.no_grad():
            for rows, index, values in reversed(saved):
                rows[index].copy_(values)
