"""Per-row vectors (embeddings, scores) cached on disk in fixed-size chunks, so work resumes.

Layout: ``ROOT/<key>/meta.json`` and ``chunk-000000.npy``, ... each holding rows
``[i * chunk_rows, (i + 1) * chunk_rows)``. ``<key>`` hashes everything that decides the vectors
(encoder fingerprint, dataset fingerprint, text field, pooling, ...). A chunk is written to a temporary
file in the same folder and moved into place with ``os.replace`` (atomic on POSIX): an interrupted run
leaves whole chunks or none, and the next run computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import numpy as np

CACHE_VERSION = 1


def default_root() -> str:
    """``$FTPLUGINS_CACHE`` or ``~/.cache/ftplugins``, plus ``/selection``."""
    base = os.environ.get("FTPLUGINS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ftplugins")
    return os.path.join(base, "selection")


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ChunkedArrayCache:
    """Chunks of a ``[rows, dim]`` float array under ``root/key``; ``root=None`` keeps nothing on disk."""

    def __init__(self, root: str | None, key: str, meta: dict[str, Any], chunk_rows: int):
        self.key, self.chunk_rows = key, chunk_rows
        self.folder = os.path.join(root, key) if root else None
        if self.folder:
            os.makedirs(self.folder, exist_ok=True)
            meta_path = os.path.join(self.folder, "meta.json")
            if not os.path.exists(meta_path):
                body = json.dumps({**meta, "chunk_rows": chunk_rows}, indent=2, default=str).encode()
                _atomic_write(meta_path, lambda handle: handle.write(body))

    def _path(self, index: int) -> str:
        return os.path.join(self.folder, f"chunk-{index:06d}.npy")  # type: ignore[arg-type]

    def load(self, index: int) -> np.ndarray | None:
        if not self.folder or not os.path.exists(self._path(index)):
            return None
        return np.load(self._path(index), allow_pickle=False)

    def save(self, index: int, array: np.ndarray) -> None:
        if self.folder:
            _atomic_write(self._path(index), lambda handle: np.save(handle, array, allow_pickle=False))

    def load_path(self, index: int) -> str | None:
        """The chunk's file if it exists (complete: chunks are published atomically)."""
        path = self._path(index) if self.folder else None
        return path if path and os.path.exists(path) else None


def chunked_rows(rows: int, chunk_rows: int, cache: ChunkedArrayCache, compute, progress=None) -> np.ndarray:
    """``[rows, dim]`` assembled from cached chunks, computing (``compute(start, stop)``) only missing ones.

    With several processes (:mod:`.shards`) each computes its own contiguous shard of the missing chunks, then
    all read every chunk from the shared cache.
    """
    from .shards import my_chunks, process_shard, wait_for_chunks

    bounds = [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]
    rank, world = process_shard()
    if world > 1 and cache.folder is None:
        from ftplugins.errors import FtpluginsError

        raise FtpluginsError(
            f"{world} processes share the embedding/scoring work through the cache, but the cache is off "
            "(cache_dir none); give a cache_dir that every process can read."
        )
    mine = my_chunks(len(bounds), rank, world) if world > 1 else range(len(bounds))
    parts: dict[int, np.ndarray] = {}
    for index in mine:
        start, stop = bounds[index]
        array = cache.load(index)
        if array is None or array.shape[0] != stop - start:
            array = np.ascontiguousarray(compute(start, stop))
            cache.save(index, array)
        if progress is not None:
            progress.update(stop - start)
        parts[index] = array
    if world > 1:
        wait_for_chunks(lambda: [i for i in range(len(bounds)) if i not in parts and cache.load_path(i) is None],
                        f"cache {cache.folder}")
        for index in range(len(bounds)):
            if index not in parts:
                parts[index] = cache.load(index)
    return np.concatenate([parts[i] for i in range(len(bounds))], axis=0)
