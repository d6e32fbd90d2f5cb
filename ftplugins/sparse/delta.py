"""Sparse deltas: the artifact of sparse fine-tuning (indices + values of ``W - W0``).

A :class:`SparseDelta` maps tensor names (as in the model's ``state_dict`` / ``model.safetensors``)
to the flat indices where a weight changed and by how much. It is saved as safetensors (no
pickle), written atomically, and can be

* applied onto a base (``W0 + Δ``), reverted (``W - Δ``), and
* composed: several deltas summed into one (LT-SFT's language + task deltas), which is what
  ``apply`` of several deltas does, so the result does not depend on their order.

Exactness. Values are stored in fp64 whatever the weights' dtype, and apply / revert compute
``W0 ± Δ`` in fp64 and round once to the weight's dtype. The difference of two weights is then held
exactly (or to within fp64's last bit when the two are more than 2**29 (fp32) / 2**45 (bf16) apart
in magnitude), hence:

* applying a delta to the base it was taken from gives the fine-tuned weights bit for bit;
* reverting gives the base back bit for bit, unless an entry grew by more than ~5e8 times (fp32
  weights; ~3e13 for bf16) from a nonzero base value;
* composing sums in fp64, where additions of such differences are exact, so the order of the deltas
  does not change a bit.

(LT-SFT's reference stores fp32 differences above 1e-7 and adds them in fp32; none of this holds
there, and fp32 differences would not round-trip either: see the tests.)

File layout: for every tensor ``name``, ``delta_values/name`` (1-D) and, unless the delta is dense
for that tensor, ``delta_indices/name`` (sorted flat indices, int32 when they fit); the header
metadata holds ``format``, ``version``, the tensors' shapes as JSON and the record of the base the
delta was made from (:mod:`ftplugins.sparse.base_record`), which apply and revert check.
Values must be finite: a delta holding NaN or infinity (a diverged run) is refused when written and read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ftplugins.atomic import staged_dir
from ftplugins.errors import FtpluginsError

from . import base_record

FORMAT = "ftplugins.sparse_delta"
VERSION = "1"
DELTA_FILE = "sparse_delta.safetensors"
_INDICES, _VALUES = "delta_indices/", "delta_values/"


@dataclass
class DeltaTensor:
    """The change of one tensor: ``values`` at flat ``indices`` (``None``: every entry, dense)."""

    shape: tuple[int, ...]
    indices: torch.Tensor | None
    values: torch.Tensor

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def flat_indices(self) -> torch.Tensor:
        return torch.arange(self.numel, device=self.values.device) if self.indices is None else self.indices


@dataclass
class SparseDelta:
    """Per tensor name, a :class:`DeltaTensor`; ``metadata`` is saved in the file header."""

    tensors: dict[str, DeltaTensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return sum(t.nnz for t in self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    def scaled(self, factor: float) -> SparseDelta:
        """``factor * Δ`` (``-1`` gives the delta that reverts this one)."""
        return SparseDelta({n: DeltaTensor(t.shape, t.indices, t.values * factor) for n, t in self.tensors.items()},
                           dict(self.metadata))


#: The dtype of delta values (see "Exactness" above).
VALUES_DTYPE = torch.float64


# --- making deltas --------------------------------------------------------------------------------


@torch.no_grad()
def diff_delta(weights: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
               names: Iterable[str] | None = None, dense: Iterable[str] = ()) -> SparseDelta:
    """``weights - base`` for ``names`` (default: every name of ``weights``), keeping nonzero entries only.

    Names in ``dense`` are stored dense (every entry), like LT-SFT's classifier head.
    """
    dense = set(dense)
    out = SparseDelta()
    checksums = {}
    for name in names if names is not None else weights:
        new, old = weights[name], base[name]
        if new.shape != old.shape:
            raise FtpluginsError(f"cannot diff {name}: shapes {tuple(new.shape)} and {tuple(old.shape)} differ")
        change = (new.detach().reshape(-1).to(VALUES_DTYPE)
                  - old.detach().reshape(-1).to(device=new.device, dtype=VALUES_DTYPE))
        out.tensors[name] = _entry(tuple(new.shape), None, change, keep_dense=name in dense)
        checksums[name] = base_record.tensor_sha256(old)
    out.metadata = base_record.record({}, checksums)
    return out


@torch.no_grad()
def delta_from_optimizer(optimizer: Any) -> SparseDelta:
    """``W - W0`` of every parameter a :class:`~ftplugins.sparse.SparseAdamW` trained (``track_origin=True``).

    Entries never selected never moved, so the origin values the optimizer keeps for every entry it
    ever selected are all that is needed: no dense copy of the base model is kept during training.
    To write it to a file, :func:`save_optimizer_delta` does the same one tensor at a time.
    """
    _check_tracks_origin(optimizer)
    params = optimizer.named_params()
    checksums = {name: base_record.tensor_sha256(_origin_tensor(optimizer, param)) for name, param in params}
    return SparseDelta({name: _optimizer_entry(optimizer, param) for name, param in params},
                       base_record.record({}, checksums))


def _check_tracks_origin(optimizer: Any) -> None:
    if not getattr(optimizer, "track_origin", False):
        raise FtpluginsError("this SparseAdamW was built with track_origin=False, so it does not know W0; "
                             "build it with track_origin=True, or use diff_delta(model_weights, base_weights)")


def _optimizer_entry(optimizer: Any, param: torch.Tensor) -> DeltaTensor:
    state = optimizer.state[param]
    indices = state["origin_indices"]
    flat = param.detach().reshape(-1)
    current = flat if indices is None else flat.index_select(0, indices)
    change = current.to(VALUES_DTYPE) - state["origin_values"].to(VALUES_DTYPE)
    return _entry(tuple(param.shape), indices, change, keep_dense=indices is None)


def _entry(shape: tuple[int, ...], indices: torch.Tensor | None, change: torch.Tensor, keep_dense: bool) -> DeltaTensor:
    if keep_dense:
        return DeltaTensor(shape, None, change.cpu())
    nonzero = change != 0
    kept = nonzero.nonzero().squeeze(1) if indices is None else indices[nonzero].to(torch.int64)
    return DeltaTensor(shape, kept.cpu(), change[nonzero].cpu())


# --- files ----------------------------------------------------------------------------------------


def save_delta(delta: SparseDelta, path: str) -> str:
    """Write ``delta`` to ``path`` (safetensors), atomically; returns ``path``."""
    return _write(path, {name: entry.shape for name, entry in delta.tensors.items()}, delta.tensors.__getitem__,
                  delta.metadata)


def save_optimizer_delta(optimizer: Any, path: str, metadata: Mapping[str, str] | None = None,
                         config: Any = None) -> str:
    """:func:`delta_from_optimizer` written to ``path`` one tensor at a time (the whole delta never exists
    in memory: at the end of a long run it can be as large as the optimizer's state); returns ``path``.
    The header records the base (its ``config`` and each tensor's base values, rebuilt from the origin
    values the optimizer keeps, one tensor at a time)."""
    _check_tracks_origin(optimizer)
    params = dict(optimizer.named_params())
    checksums = {name: base_record.tensor_sha256(_origin_tensor(optimizer, param)) for name, param in params.items()}
    return _write(path, {name: tuple(param.shape) for name, param in params.items()},
                  lambda name: _optimizer_entry(optimizer, params[name]),
                  base_record.record(dict(metadata or {}), checksums, config))


@torch.no_grad()
def _origin_tensor(optimizer: Any, param: torch.Tensor) -> torch.Tensor:
    """``param`` as it was before training: its current values with the origin values put back."""
    state = optimizer.state[param]
    indices, origin = state["origin_indices"], state["origin_values"]
    if indices is None:
        return origin.reshape(param.shape)
    base = param.detach().clone()
    base.view(-1).index_copy_(0, indices.to(torch.int64), origin.to(base.dtype))
    return base


def _write(path: str, shapes: Mapping[str, tuple[int, ...]], entry_of: Any, metadata: Mapping[str, str]) -> str:
    """Two passes over ``entry_of(name)``: sizes for the header, then the tensors, one entry alive at a time."""
    from ftplugins.safetensors_stream import write_streamed

    def index_dtype(shape):
        numel = 1
        for dim in shape:
            numel *= int(dim)
        return torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64

    layout = []
    for name, shape in shapes.items():
        entry = entry_of(name)
        if not bool(torch.isfinite(entry.values).all()):
            raise FtpluginsError(f"the delta of {name} holds NaN or infinite values (did training diverge?); "
                                 f"not writing {path}")
        layout.append((_VALUES + name, entry.values.dtype, (entry.nnz,)))
        if entry.indices is not None:
            layout.append((_INDICES + name, index_dtype(shape), (entry.nnz,)))
        del entry

    def tensors():
        for name, shape in shapes.items():
            entry = entry_of(name)
            yield entry.values.reshape(-1)
            if entry.indices is not None:
                yield entry.indices.to(index_dtype(shape))

    header = {**metadata, "format": FORMAT, "version": VERSION,
              "shapes": json.dumps({name: list(shape) for name, shape in shapes.items()})}
    path = os.path.abspath(path)
    with staged_dir(os.path.dirname(path)) as tmp:
        write_streamed(os.path.join(tmp, os.path.basename(path)), layout, tensors(), header)
    return path


def load_delta(path: str, device: str | torch.device = "cpu") -> SparseDelta:
    """Read a delta written by :func:`save_delta`; checks the file, the format, every index and value."""
    from safetensors import safe_open

    if os.path.isdir(path):
        inside = os.path.join(path, DELTA_FILE)
        hint = f"; did you mean {inside}?" if os.path.isfile(inside) else ""
        raise FtpluginsError(f"sparse delta {path!r} is a folder; expected a delta file (*.safetensors){hint}")
    if not os.path.isfile(path):
        raise FtpluginsError(f"sparse delta {path!r} does not exist")
    try:
        with safe_open(path, framework="pt", device=str(device)) as handle:
            metadata = dict(handle.metadata() or {})
            if metadata.get("format") != FORMAT:
                raise FtpluginsError(f"{path!r} is not an ftplugins sparse delta (header format "
                                     f"{metadata.get('format')!r}, expected {FORMAT!r})")
            shapes = _shapes(path, metadata.pop("shapes", None))
            keys = set(handle.keys())
            delta = SparseDelta(metadata={k: v for k, v in metadata.items() if k not in ("format", "version")})
            for name, shape in shapes.items():
                if _VALUES + name not in keys:
                    raise FtpluginsError(f"sparse delta {path!r}: tensor {name} has no values (damaged file)")
                values = handle.get_tensor(_VALUES + name)
                indices = handle.get_tensor(_INDICES + name).to(torch.int64) if _INDICES + name in keys else None
                entry = DeltaTensor(tuple(shape), indices, values)
                _check_entry(path, name, entry)
                delta.tensors[name] = entry
    except FtpluginsError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FtpluginsError(f"sparse delta {path!r} is not a readable safetensors file (empty, truncated or another "
                             f"format: {first}); write it again with ftplugins") from None
    base_record.tensors_of(delta.metadata)  # a damaged record is an error now, not at apply time
    return delta


def _shapes(path: str, text: str | None) -> dict[str, list[int]]:
    try:
        shapes = json.loads(text) if text is not None else None
    except ValueError:
        shapes = None
    if not isinstance(shapes, dict) or not all(
            isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes.values()):
        raise FtpluginsError(f"sparse delta {path!r} has no valid 'shapes' record in its header (name -> list of "
                             "sizes); it was not written by ftplugins, or was damaged")
    return shapes


def _check_entry(source: str, name: str, entry: DeltaTensor) -> None:
    problem = None
    if entry.values.dim() != 1:
        problem = "values are not 1-D"
    elif not entry.values.is_floating_point():
        problem = f"values are {entry.values.dtype}, expected floating point"
    elif not bool(torch.isfinite(entry.values).all()):
        problem = "values hold NaN or infinity"
    elif entry.indices is None and entry.values.numel() != entry.numel:
        problem = f"a dense delta has {entry.values.numel()} values for {entry.numel} entries"
    elif entry.indices is not None:
        if entry.indices.numel() != entry.values.numel():
            problem = f"{entry.indices.numel()} indices but {entry.values.numel()} values"
        elif entry.indices.numel() and (int(entry.indices.min()) < 0 or int(entry.indices.max()) >= entry.numel):
            problem = f"indices outside [0, {entry.numel})"
        elif entry.indices.numel() > 1 and not bool((entry.indices[1:] > entry.indices[:-1]).all()):
            problem = "indices are not sorted and unique"
    if problem:
        raise FtpluginsError(f"sparse delta {source}: tensor {name}: {problem}")


# --- using deltas ---------------------------------------------------------------------------------


def compose_deltas(deltas: Iterable[SparseDelta]) -> SparseDelta:
    """One delta equal to the sum of ``deltas`` (union of indices, values added in fp64).

    Each value is an exact difference of two weights, so these fp64 sums are exact and the result does
    not depend on the order of ``deltas``.
    """
    deltas = list(deltas)
    per_name: dict[str, list[DeltaTensor]] = {}
    for delta in deltas:
        for name, entry in delta.tensors.items():
            per_name.setdefault(name, []).append(entry)
    out = SparseDelta(metadata={"composed_from": str(len(deltas)), **base_record.merged(d.metadata for d in deltas)})
    for name, entries in per_name.items():
        shape = entries[0].shape
        if any(e.shape != shape for e in entries):
            raise FtpluginsError(f"cannot compose deltas of {name}: shapes {sorted({e.shape for e in entries})} differ")
        dtype = VALUES_DTYPE
        if any(e.indices is None for e in entries):
            total = torch.zeros(entries[0].numel, dtype=dtype)
            for e in entries:
                total.index_add_(0, e.flat_indices(), e.values.to(dtype))
            out.tensors[name] = DeltaTensor(shape, None, total)
            continue
        indices, inverse = torch.unique(torch.cat([e.indices for e in entries]), sorted=True, return_inverse=True)
        total = torch.zeros(indices.numel(), dtype=dtype)
        total.index_add_(0, inverse, torch.cat([e.values.to(dtype) for e in entries]))
        out.tensors[name] = DeltaTensor(shape, indices, total)
    return out


def _tensors_of(target: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(target, nn.Module):
        return target.state_dict(keep_vars=True)
    return target


@torch.no_grad()
def apply_delta(target: nn.Module | Mapping[str, torch.Tensor], *deltas: SparseDelta, scale: float = 1.0,
                check_base: bool = True, config: Any = None, source: str = "the delta"):
    """Add the deltas (composed first) to ``target`` (a model or a name -> tensor mapping), in place.

    Each changed entry is computed as ``round(W0 + scale * Δ)`` in fp64 and written in the
    tensor's own dtype. With ``check_base``, the delta's base record must match ``target`` (and its
    ``config``, by default a model's own), see :mod:`ftplugins.sparse.base_record`. Returns ``target``.
    """
    delta = deltas[0] if len(deltas) == 1 else compose_deltas(deltas)
    tensors = _tensors_of(target)
    missing = [name for name in delta.tensors if name not in tensors]
    if missing:
        raise FtpluginsError(f"the delta changes {len(missing)} tensor(s) the target does not have, e.g. "
                             f"{missing[:3]}; apply it to the model it was trained from")
    for name, entry in delta.tensors.items():
        if tuple(tensors[name].shape) != tuple(entry.shape):
            raise FtpluginsError(f"delta for {name} has shape {entry.shape}, "
                                 f"the target tensor {tuple(tensors[name].shape)}")
    if check_base:
        if config is None and isinstance(target, nn.Module):
            config = getattr(target, "config", None)

        def applied(name, copy, factor):
            _apply_entry(name, copy, delta.tensors[name], factor)
            return copy

        base_record.check_base(source, delta.metadata, {n: tensors[n] for n in delta.tensors}, applied, scale, config)
    for name, entry in delta.tensors.items():
        _apply_entry(name, tensors[name], entry, scale)
    return target


def revert_delta(target: nn.Module | Mapping[str, torch.Tensor], *deltas: SparseDelta, check_base: bool = True):
    """Subtract the deltas from ``target`` in place (the inverse of :func:`apply_delta`); returns ``target``."""
    return apply_delta(target, *deltas, scale=-1.0, check_base=check_base)


def _apply_entry(name: str, tensor: torch.Tensor, entry: DeltaTensor, scale: float) -> None:
    if tuple(tensor.shape) != tuple(entry.shape):
        raise FtpluginsError(f"delta for {name} has shape {entry.shape}, the target tensor {tuple(tensor.shape)}")
    if not tensor.is_contiguous():
        raise FtpluginsError(f"cannot apply a delta to the non-contiguous tensor {name}")
    flat = tensor.detach().view(-1)
    values = entry.values.to(device=flat.device, dtype=torch.float64)
    if scale != 1.0:
        values = values * scale
    indices = None if entry.indices is None else entry.indices.to(flat.device)
    current = flat.to(torch.float64) if indices is None else flat.index_select(0, indices).to(torch.float64)
    result = (current + values).to(flat.dtype)
    if result.is_floating_point() and not bool(torch.isfinite(result).all()):
        raise FtpluginsError(f"applying the delta to {name} gives values that overflow {flat.dtype} (NaN or "
                             "infinity); refusing to write them")
    if indices is None:
        flat.copy_(result)
    else:
        flat.index_copy_(0, indices, result)


def apply_to_model_dir(base_dir: str, deltas: list[SparseDelta], output_dir: str, scale: float = 1.0,
                       overwrite: bool = False, check_base: bool = True, sources: list[str] | None = None) -> list[str]:
    """Write ``base_dir``'s model with ``deltas`` added (``scale=-1``: subtracted) to ``output_dir``.

    Works on the safetensors files directly (one shard in memory at a time, any architecture);
    every other file (config, tokenizer, shard index) is copied. ``output_dir`` must be new or empty
    unless ``overwrite`` (it may then be ``base_dir`` itself); it ends up holding exactly the new model
    (no stale shards of what it held), written staged inside it and under its lock. With ``check_base``,
    each delta's base record must match ``base_dir`` (:mod:`ftplugins.sparse.base_record`).
    Returns the tensor names changed.
    """
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from ftplugins.atomic import clean_staging
    from ftplugins.output_lock import lock_output_dir

    if not os.path.isdir(base_dir):
        raise FtpluginsError(f"base model folder {base_dir!r} does not exist")
    base, out = os.path.abspath(base_dir), os.path.abspath(output_dir)
    if out != base and out.startswith(base + os.sep):
        raise FtpluginsError(f"output folder {output_dir!r} is inside the base model folder; choose another place")
    check_output_folder(output_dir, overwrite)
    shards = sorted(f for f in os.listdir(base_dir) if f.endswith(".safetensors"))
    if not shards:
        raise FtpluginsError(f"{base_dir!r} holds no *.safetensors weights; save the model with save_pretrained()")
    sources = sources or [f"delta {i + 1}" for i in range(len(deltas))]
    config = _config_of(base_dir) if check_base else None
    if check_base and len(deltas) > 1:
        for delta, source in zip(deltas, sources):  # each delta's config, before their records merge
            if base_record.tensors_of(delta.metadata) is not None:
                base_record.check_base(source, delta.metadata, {}, None, scale, config)
    delta = deltas[0] if len(deltas) == 1 else compose_deltas(deltas)
    source = sources[0] if len(deltas) == 1 else f"the composition of {', '.join(sources)}"
    checked = check_base and base_record.tensors_of(delta.metadata) is not None
    if check_base and not checked:
        base_record.check_base(source, delta.metadata, {}, None, scale)  # warns: no record
    pending = set(delta.tensors)
    with lock_output_dir(output_dir, "ftplugins delta"):
        clean_staging(output_dir)
        with staged_dir(output_dir, replace=True) as tmp:
            for shard in shards:
                with safe_open(os.path.join(base_dir, shard), framework="pt") as handle:
                    metadata = handle.metadata()
                    tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                mine = [name for name in tensors if name in pending]
                if mine:
                    apply_delta({name: tensors[name] for name in mine},
                                SparseDelta({name: delta.tensors[name] for name in mine}, delta.metadata),
                                scale=scale, check_base=checked, config=config, source=source)
                pending -= set(mine)
                save_file(tensors, os.path.join(tmp, shard), metadata=metadata)
            if pending:
                raise FtpluginsError(f"{base_dir!r} has no tensor(s) {sorted(pending)[:3]} that the delta changes "
                                     "(a different base model, or tied weights saved under another name?)")
            for root, dirs, files in os.walk(base_dir):
                dirs[:] = [d for d in dirs if not d.startswith(".ftplugins")]
                rel = os.path.relpath(root, base_dir)
                for name in files:
                    if rel == "." and (name.endswith(".safetensors") or name.startswith(".ftplugins")
                                       or name == "ftplugins_run.json"):  # a run's manifest would not vouch for it
                        continue
                    target = os.path.join(tmp, rel, name)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(os.path.join(root, name), target)
    return sorted(delta.tensors)


def check_output_folder(output_dir: str, overwrite: bool) -> None:
    """An output model folder must be new or empty, unless ``overwrite`` (never a file)."""
    if os.path.isfile(output_dir):
        raise FtpluginsError(f"output {output_dir!r} is a file; expected a folder for the model (a new or empty one)")
    if os.path.isdir(output_dir) and not overwrite:
        held = [n for n in os.listdir(output_dir) if not n.startswith(".ftplugins")]
        if held:
            raise FtpluginsError(f"output folder {output_dir!r} is not empty (it holds {len(held)} entries, e.g. "
                                 f"{sorted(held)[0]}); choose a new folder, or pass --overwrite to replace its content")


def _config_of(model_dir: str) -> Any:
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception:  # noqa: BLE001 - an unknown model type: compare the raw file instead
        with open(os.path.join(model_dir, "config.json")) as handle:
            return json.load(handle)
