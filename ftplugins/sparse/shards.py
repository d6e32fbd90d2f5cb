"""The sparse engine on FSDP2's dim-0 shards: each process keeps the selected entries of its own rows.

FSDP2 (``fully_shard``) turns every parameter into a ``DTensor`` split by rows (``Shard(0)``, torch's chunking:
``ceil(rows / N)`` rows a process, the last ones can hold fewer or none). The engine works on such a parameter
as follows:

* **Selection** is made on the whole tensor (``full_tensor()``, one tensor at a time, freed after), so it is the
  1-process selection; each process keeps the indices inside its rows, re-based to its local shard
  (:func:`localize`). The optimizer is created before Accelerate shards the model (FSDP2 needs it so); when it
  first sees the sharded parameters it moves each one's state to its rows (:func:`adopt_shards`).
* **State** (moments, master copies, origin values) exists for the local entries only: about 1/N per process.
* **Gradients** are read from the reduce-scattered shard (``param.grad.to_local()``), already averaged by FSDP:
  no second all-reduce. The gradient norm sums the squares over processes.
* **Update inside the backward** (``step_in_backward``): FSDP2 runs post-accumulate-grad hooks on a sharded
  parameter after its reduce-scatter, so the engine's hook is registered on each shard (:func:`adopt_shards`, before
  the first forward: :class:`AdoptBeforeForward`) and updates the process's rows there.
* **The delta** is gathered to full tensors and global indices (:func:`gathered_optimizer`) and written by the
  main process, so the file equals the 1-process one.

* **Checkpoints**: each process writes its rows' state into the checkpoint and reads it back when resuming
  (:mod:`ftplugins.sparse.resume`; Accelerate's own optimizer file keeps rank 0's compact state only); with another
  number of processes each one re-cuts the state put together from all the files. A resume outside FSDP2 is refused.

Not yet: HSDP / tensor-parallel layouts.
"""

from __future__ import annotations

from typing import Any

import torch

from ftplugins.errors import FtpluginsError


def is_sharded(param: Any) -> bool:
    """Whether ``param`` is a ``DTensor`` (a parameter FSDP2 sharded)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(param, DTensor)


def local(param: Any) -> torch.Tensor:
    """This process's rows of ``param`` (the tensor itself when it is not sharded), sharing its storage."""
    if not is_sharded(param):
        return param
    with torch.no_grad():
        return param.to_local()


def row_range(param: Any, name: str = "a parameter") -> tuple[int, int, int]:
    """``(first row, end row, entries per row)`` of this process's shard of ``param``.

    Only FSDP2's plain layout is understood: one mesh dimension, ``Shard(0)``; anything else (HSDP's 2-D mesh,
    tensor parallelism's ``Shard(1)``) is refused by name."""
    from torch.distributed.tensor import Shard

    placements = tuple(param.placements)
    mesh = param.device_mesh
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise FtpluginsError(
            f"the sparse engine trains FSDP2 parameters split by rows over one mesh dimension (placements "
            f"(Shard(0),)); {name} has placements {placements} on a {mesh.ndim}-D mesh (HSDP or tensor "
            "parallelism). Use plain FSDP2 (fsdp_version: 2, no hybrid sharding, no tensor parallel) or DDP.")
    rows = int(param.shape[0]) if param.dim() else 1
    world, rank = mesh.size(), mesh.get_local_rank()
    start, end = chunk_rows(rows, world, rank)
    shard = param.to_local()
    cols = param.numel() // rows if rows else 0
    if shard.numel() != (end - start) * cols:
        raise FtpluginsError(
            f"the sparse engine expected rows {start}:{end} of {name} (torch's chunking of {rows} rows over "
            f"{world} processes) on process {rank}, but its shard has {shard.numel()} entries; a sharding other "
            "than FSDP2's default (a custom shard_placement_fn) is not supported: drop it or use DDP.")
    return start, end, cols


def chunk_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``start:end`` of process ``rank`` in torch's chunking (``torch.chunk``, what ``Shard(0)`` uses):
    ``ceil(rows / world)`` each, the last processes fewer or none."""
    chunk = -(-rows // world)
    return min(rank * chunk, rows), min((rank + 1) * chunk, rows)


def localize(indices: torch.Tensor, start: int, end: int, cols: int) -> tuple[int, int, torch.Tensor]:
    """The sorted flat ``indices`` (of the whole tensor) that fall in rows ``start:end``: their positions
    ``a:b`` in ``indices`` and their values re-based to the shard."""
    bounds = torch.tensor([start * cols, end * cols], dtype=indices.dtype, device=indices.device)
    a, b = torch.searchsorted(indices, bounds).tolist()
    return a, b, indices[a:b] - start * cols


def full_weights(named: list[tuple[str, Any]]) -> dict[str, Any]:
    """``{name: weight}`` for a selection rule: sharded weights are all-gathered when the rule looks one up
    (every process looks them up in the same order), so one whole tensor exists at a time."""
    return _Gathering(named)


class _Gathering(dict):
    """Names to parameters, read as whole detached tensors; ``values`` / ``items`` gather lazily, in order."""

    def __init__(self, named: list[tuple[str, Any]]) -> None:
        super().__init__((name, param) for name, param in named)

    def __getitem__(self, name: str) -> torch.Tensor:
        param = super().__getitem__(name)
        with torch.no_grad():
            return param.full_tensor() if is_sharded(param) else param.detach()

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def values(self):
        return (self[name] for name in self)

    def items(self):
        return ((name, self[name]) for name in self)


def localize_state(state: dict[str, Any], param: Any, name: str) -> dict[str, Any]:
    """The state of a whole tensor (global indices) cut to this process's rows of ``param`` (sharded)."""
    from .optimizer import compact_indices, share_equal_origin

    start, end, cols = row_range(param, name)
    numel = local(param).numel()
    out: dict[str, Any] = {"step": state["step"]}
    indices = state.get("indices")
    if indices is None:
        a, b, new = start * cols, end * cols, None
    else:
        a, b, new = localize(indices, start, end, cols)
        new = compact_indices(new.contiguous(), max(numel, 1))
        out["indices"] = new
    for key in ("exp_avg", "exp_avg_sq", "master"):
        if key in state:
            out[key] = state[key][a:b].clone()
    if "origin_values" in state:
        origin = state["origin_indices"]
        if origin is indices:
            out["origin_indices"], out["origin_values"] = new, state["origin_values"][a:b].clone()
        elif origin is None:
            out["origin_indices"] = None
            out["origin_values"] = state["origin_values"][start * cols:end * cols].clone()
        else:
            oa, ob, kept = localize(origin, start, end, cols)
            out["origin_indices"] = compact_indices(kept.contiguous(), max(numel, 1))
            out["origin_values"] = state["origin_values"][oa:ob].clone()
    return share_equal_origin(out)


def adopt_shards(optimizer: Any) -> bool:
    """Move the optimizer's state to the sharded parameters Accelerate put in its groups (by position: FSDP2's
    ``prepare`` swaps each parameter for its ``DTensor`` in place). Returns whether the optimizer is sharded."""
    named = optimizer.named_params()
    if all(param in optimizer.state for _, param in named):
        return any(is_sharded(param) for _, param in named)
    old = list(optimizer.state.items())
    if len(old) != len(named):
        raise FtpluginsError(
            f"the sparse optimizer holds state for {len(old)} tensors but its groups now have {len(named)} "
            "parameters: something other than FSDP2's prepare replaced them; build the optimizer for the model "
            "as it is trained.")
    from collections import defaultdict

    from .optimizer import _own_grad_hook

    state: defaultdict = defaultdict(dict)
    for (name, param), (_, saved) in zip(named, old):
        state[param] = localize_state(saved, param, name) if is_sharded(param) else saved
        if optimizer.step_in_backward and is_sharded(param):  # FSDP2 runs it after the shard's reduce-scatter
            _own_grad_hook(param, optimizer)
    optimizer.state = state
    optimizer._grads.clear()
    optimizer._grad_buffers.clear()
    optimizer._workspaces.clear()
    return any(is_sharded(param) for _, param in named)


class AdoptBeforeForward:
    """A forward pre-hook on the model of an optimizer that updates inside the backward (``step_in_backward``):
    FSDP2 swaps in the sharded parameters after the optimizer exists, and FSDP2 runs the engine's gradient hook on
    a shard only once :func:`adopt_shards` registered it, so it adopts them before the first forward (else that
    step's gradients would wait in ``.grad`` for the step, dense). Removes itself once the parameters are sharded.
    A module-level class holding the optimizer weakly, so that the model can still be pickled (a copy is inert)."""

    def __init__(self, optimizer: Any) -> None:
        import weakref

        self._ref = weakref.ref(optimizer) if optimizer is not None else None
        self.handle = None

    def __call__(self, module: Any, args: Any) -> None:
        owner = self._ref() if self._ref is not None else None
        if (owner is None or owner.sharded()) and self.handle is not None:
            self.handle.remove()

    def __reduce__(self):
        return AdoptBeforeForward, (None,)


def adopt_before_forward(model: Any, optimizer: Any) -> None:
    """Install :class:`AdoptBeforeForward` on ``model`` for ``optimizer``."""
    hook = AdoptBeforeForward(optimizer)
    hook.handle = model.register_forward_pre_hook(hook)


# --- the delta -----------------------------------------------------------------------------------


class _GatheredOptimizer:
    """What :func:`ftplugins.sparse.delta.save_optimizer_delta` reads, with whole tensors and global indices."""

    track_origin = True

    def __init__(self) -> None:
        self._named: list[tuple[str, torch.Tensor]] = []
        self.state: dict[Any, dict[str, Any]] = {}

    def named_params(self) -> list[tuple[str, torch.Tensor]]:
        return list(self._named)


@torch.no_grad()
def gathered_optimizer(optimizer: Any) -> Any:
    """On every process (a collective): the main process gets an object holding each trained tensor whole and its
    origin at global indices; the others get ``None``. One tensor is gathered at a time."""
    import torch.distributed as dist

    from .optimizer import compact_indices

    main = dist.get_rank() == 0
    view = _GatheredOptimizer()
    for name, param in optimizer.named_params():
        state = optimizer.state[param]
        whole = param.full_tensor() if is_sharded(param) else param.detach()
        if is_sharded(param):
            start, end, cols = row_range(param, name)
            origin = state["origin_indices"]
            at = (torch.arange(start * cols, end * cols, device=whole.device) if origin is None
                  else origin.to(torch.int64) + start * cols)
            pieces = [None] * dist.get_world_size()
            dist.all_gather_object(pieces, (at.cpu(), state["origin_values"].cpu()))
            indices = torch.cat([p[0] for p in pieces]).to(whole.device)
            values = torch.cat([p[1] for p in pieces]).to(whole.device)
            indices = None if indices.numel() == whole.numel() else compact_indices(indices, whole.numel())
            state = {"origin_indices": indices, "origin_values": values}
        if main:
            view._named.append((name, whole))
            view.state[whole] = state
    return view if main else None


@torch.no_grad()
def gather_rows(param: Any, rows: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which ``rows`` (this process's rows, shaped like its shard of ``param``) is one shard:
    a collective, every process calls it for the same parameter. ``rows`` itself when ``param`` is not sharded."""
    if not is_sharded(param):
        return rows
    from torch.distributed.tensor import DTensor

    row_range(param)  # refuses a layout other than FSDP2's rows
    whole = DTensor.from_local(rows.contiguous(), param.device_mesh, param.placements, run_check=False,
                               shape=param.shape, stride=param.stride())
    return whole.full_tensor()


def own_rows(param: Any, whole: torch.Tensor) -> torch.Tensor:
    """This process's rows of ``whole`` (a tensor shaped like ``param``), flat; all of it when not sharded."""
    if not is_sharded(param):
        return whole.reshape(-1)
    start, end, cols = row_range(param)
    return whole.reshape(-1)[start * cols:end * cols]
