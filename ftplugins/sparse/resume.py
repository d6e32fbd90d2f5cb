"""Checkpoints of the sparse engine under FSDP2: each process writes and reads back its own rows' compact state.

Accelerate saves an FSDP2 optimizer through torch.distributed.checkpoint's state dict, which keeps rank 0's compact
state only (the engine's entries are not ``DTensor`` shards it could gather) and drops the engine's
``sparse_engine`` entry; loading it would give every process rank 0's rows. So every process also writes its
optimizer's own ``state_dict()`` (its rows, shard-local indices) as ``sparse_engine_rank<i>.pt`` into the
checkpoint (``save_checkpoint`` hook), reads it back when resuming (``load_optimizer_state``, before the Trainer's
load) and the optimizer then ignores Accelerate's copy (:meth:`SparseAdamW.load_state_dict`). The rows of a process
depend on the number of processes, so such a checkpoint resumes under FSDP2 with the same number only: anything
else is refused by name.
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
                f"that state. Resume it under FSDP2 with {len(saved)} processes.")
        return
    optimizer = sparse_optimizer_of(getattr(trainer, "optimizer", None))
    if optimizer is None:
        return
    path = os.path.join(checkpoint, RANK_FILE.format(rank=rank))
    if not os.path.isfile(path):
        raise FtpluginsError(
            f"{method}: resuming under FSDP2 needs {os.path.basename(path)} in {checkpoint} (each process's rows of "
            f"the sparse engine's state; Accelerate's optimizer file holds rank 0's only), and it is missing: the "
            f"checkpoint was saved without FSDP2 or by an older ftplugins ({len(saved)} such file(s) there). "
            "Resume it in the layout that saved it, or start the run again.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if int(state["world_size"]) != world:
        raise FtpluginsError(
            f"{method}: {checkpoint} was saved under FSDP2 by {state['world_size']} processes, this run has {world}: "
            "each process's rows of the sparse engine's state depend on the number of processes, so it resumes "
            f"with {state['world_size']} processes only.")
    optimizer.load_state_dict(state["optimizer"])
    optimizer.keep_loaded_state()
