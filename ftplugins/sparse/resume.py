"""Checkpoints of the sparse engine under FSDP2: each process writes and reads back its own rows' compact state.

Accelerate saves an FSDP2 optimizer through torch.distributed.checkpoint's state dict, which keeps rank 0's compact
state only (the engine's entries are not ``DTensor`` shards it could gather) and drops the engine's
``sparse_engine`` entry; loading it would give every process rank 0's rows. So every process also writes its
optimizer's own ``state_dict()`` (its rows, shard-local indices) as ``sparse_engine_rank<i>.pt`` into the
checkpoint (``save_checkpoint`` hook), reads it back when resuming (``load_optimizer_state``, before the Trainer's
load) and the optimizer then ignores Accelerate's copy (:meth:`SparseAdamW.load_state_dict`). The rows of a process
depend on the number of processes: with another number, every process reads all the files, puts each tensor's state
together at global indices (:func:`whole_state`) and keeps its own rows
(:func:`~ftplugins.sparse.shards.localize_state`).
A resume outside FSDP2 is refused by name (the Trainer would look for an ``optimizer.pt`` such a checkpoint lacks).
"""

from __future__ import annotations

import glob
import os
from typing import Any

from ftplugins.errors import FtpluginsError

RANK_FILE = "sparse_engine_rank{rank}.pt"


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_rank_state(trainer: Any, checkpoint: str) -> None:
    """On every process of an FSDP2 run: write its rows' optimizer state into ``checkpoint``."""
    import torch

    from .trainer import sparse_optimizer_of

    optimizer = sparse_optimizer_of(getattr(trainer, "optimizer", None))
    if optimizer is None or not optimizer.sharded():
        return
    rank, world = _world()
    os.makedirs(checkpoint, exist_ok=True)
    torch.save({"rank": rank, "world_size": world, "optimizer": optimizer.state_dict()},
               os.path.join(checkpoint, RANK_FILE.format(rank=rank)))


def load_rank_state(method: str, trainer: Any, checkpoint: str) -> None:
    """When resuming: restore this process's rows from ``checkpoint`` under FSDP2, or refuse a checkpoint whose
    rows were split for another layout (or an FSDP2 one without the per-process files)."""
    import torch

    from .trainer import sparse_optimizer_of

    saved = sorted(glob.glob(os.path.join(checkpoint, RANK_FILE.format(rank="*"))))
    fsdp = bool(getattr(trainer, "is_fsdp_enabled", False))
    rank, world = _world()
    if not fsdp:
        if saved:
            raise FtpluginsError(
                f"{method}: {checkpoint} was saved under FSDP2 by {len(saved)} processes, each holding the sparse "
                f"engine's state of its own rows; this run is not FSDP2 ({world} process(es)), so it cannot take "
                "that state. Resume it under FSDP2 (any number of processes).")
        return
    optimizer = sparse_optimizer_of(getattr(trainer, "optimizer", None))
    if optimizer is None:
        return
    path = os.path.join(checkpoint, RANK_FILE.format(rank=rank))
    if not os.path.isfile(path):  # more processes than saved it: rank 0's file tells how many did
        path = os.path.join(checkpoint, RANK_FILE.format(rank=0))
    if not os.path.isfile(path):
        raise FtpluginsError(
            f"{method}: resuming under FSDP2 needs the sparse engine's state of every saving process "
            f"({RANK_FILE.format(rank='<i>')}; Accelerate's optimizer file holds rank 0's rows only), and "
            f"{checkpoint} has none: it was saved without FSDP2 or by an older ftplugins. Resume it in the layout "
            "that saved it, or start the run again.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if int(state["world_size"]) != world:
        state = {"optimizer": _resplit(method, optimizer, checkpoint, int(state["world_size"]))}
    optimizer.load_state_dict(state["optimizer"])
    optimizer.keep_loaded_state()


def _resplit(method: str, optimizer: Any, checkpoint: str, saved_world: int) -> dict[str, Any]:
    """The state dict of this process's rows, from the files of ``saved_world`` processes."""
    import torch

    from .shards import is_sharded, localize_state

    paths = [os.path.join(checkpoint, RANK_FILE.format(rank=rank)) for rank in range(saved_world)]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FtpluginsError(f"{method}: {checkpoint} was saved by {saved_world} FSDP2 processes but lacks {missing}; "
                             "copy the whole checkpoint folder, or start the run again.")
    saved = [torch.load(p, map_location="cpu", weights_only=True)["optimizer"] for p in paths]
    first = saved[0]
    out: dict[str, Any] = {"state": {}, "param_groups": first["param_groups"], "sparse_engine": first["sparse_engine"]}
    for saved_group, group in zip(first["param_groups"], optimizer.param_groups):
        for key, name, param in zip(saved_group["params"], group["param_names"], group["params"]):
            if key not in first["state"]:
                continue
            if not is_sharded(param):  # replicated: every process saved the same state
                out["state"][key] = first["state"][key]
                continue
            whole = whole_state([piece["state"][key] for piece in saved], tuple(param.shape))
            out["state"][key] = localize_state(whole, param, name)
    return out


def whole_state(pieces: list[dict[str, Any]], shape: tuple[int, ...]) -> dict[str, Any]:
    """The state of a whole tensor of ``shape`` put together from its row shards' states ``pieces`` (one per saving
    process, in rank order, torch's chunking): the 1-process state, at global indices."""
    import math

    import torch

    from .optimizer import compact_indices
    from .shards import chunk_rows

    numel = math.prod(shape)
    rows = shape[0] if shape else 1
    cols = numel // rows if rows else 0

    def positions(key: str) -> torch.Tensor:  # a piece without indices holds every entry of its rows
        found = []
        for rank, piece in enumerate(pieces):
            start, end = chunk_rows(rows, len(pieces), rank)
            at = piece.get(key)
            found.append(torch.arange(start * cols, end * cols) if at is None else at.long() + start * cols)
        return torch.cat(found)

    out: dict[str, Any] = {"step": pieces[0]["step"]}
    indices = positions("indices")
    if indices.numel() != numel:
        out["indices"] = compact_indices(indices, numel)
    for key in ("exp_avg", "exp_avg_sq", "master"):
        if key in pieces[0]:
            out[key] = torch.cat([piece[key] for piece in pieces])
    if "origin_values" in pieces[0]:
        origin = positions("origin_indices")
        out["origin_values"] = torch.cat([piece["origin_values"] for piece in pieces])
        if origin.numel() == numel:
            out["origin_indices"] = None
        elif torch.equal(origin, indices):
            out["origin_indices"] = out["indices"]  # one tensor, as the optimizer keeps it
        else:
            out["origin_indices"] = compact_indices(origin, numel)
    return out
