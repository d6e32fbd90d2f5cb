"""Several processes share one embedding / scoring pass through the on-disk cache.

Under ``accelerate launch`` or ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set, or a torch process group up), each
process computes a contiguous shard of the cache chunks and writes them to the shared cache folder; then every
process waits until all chunks exist and reads the whole array, so each one continues with identical inputs
(k-means, OT and the draws are seeded, hence identical selections). No collective is needed: chunks are published
atomically, so a file that exists is complete. A process that never finishes its shard makes the others stop after
``FTPLUGINS_SHARD_TIMEOUT`` seconds (default 6 hours) with a message naming the missing chunks.
"""

from __future__ import annotations

import os
import time


def process_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when it runs alone."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def my_chunks(chunks: int, rank: int, world: int) -> range:
    """The contiguous run of chunk indices process ``rank`` of ``world`` computes."""
    per, extra = divmod(chunks, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


def wait_for_chunks(missing, describe: str, poll: float = 0.5) -> None:
    """Poll until ``missing()`` is empty (another process is writing those chunks)."""
    from ftplugins.errors import FtpluginsError

    timeout = float(os.environ.get("FTPLUGINS_SHARD_TIMEOUT", 6 * 3600))
    deadline = time.monotonic() + timeout
    while True:
        left = missing()
        if not left:
            return
        if time.monotonic() > deadline:
            raise FtpluginsError(
                f"waited {timeout:.0f} s for chunks {left[:5]}{'...' if len(left) > 5 else ''} of {describe} that "
                "other processes compute; one of them stopped. Rerun: finished chunks are reused (or raise "
                "FTPLUGINS_SHARD_TIMEOUT)."
            )
        time.sleep(poll)
