"""A run's output folder: one run at a time, and ``ftplugins_run.json`` saying which files belong to the run.

* :func:`claim_output_dir`: the process that saves (``args.should_save``: rank 0, or each node's local
  rank 0 with ``save_on_each_node``) takes the folder's lock; every process learns the outcome, so under
  DDP a refused run stops on every rank with the same message instead of hanging in a collective.
  The other ranks take no lock: they write only into staged checkpoints their rank 0 moves into place.
  Holding the lock, the saving process removes staging folders that killed saves left behind.
* :func:`write_manifest`: ``ftplugins_run.json`` (plugins, options, versions, and the ``artifacts`` this
  run published into the folder with their sha256), written last, after the files it lists.
  :func:`forget_previous_run` removes the previous run's manifest when a new run starts training, so a
  run killed half-way through its saves never leaves a manifest that vouches for a mix of two runs.
  :func:`check_manifest` verifies a folder against its manifest.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .atomic import clean_staging, published_since, sha256_file, staged_dir
from .output_lock import OutputFolderInUseError, OutputLock, lock_output_dir

MANIFEST = "ftplugins_run.json"
_hashes: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256: a file is hashed once per version


def claim_output_dir(args: Any, what: str = "a training run") -> OutputLock | None:
    """Lock ``args.output_dir`` for this run (see the module docstring); raises ``OutputFolderInUseError``."""
    lock, problem = None, None
    if args.should_save:
        try:
            lock = lock_output_dir(args.output_dir, what)
        except OutputFolderInUseError as exc:
            problem = str(exc)
    problem = _first_problem_of_all_processes(problem)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise OutputFolderInUseError(problem)
    if args.should_save:
        clean_staging(args.output_dir)
    return lock


def _first_problem_of_all_processes(problem: str | None) -> str | None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return problem
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, problem)
    return next((p for p in gathered if p is not None), None)


def forget_previous_run(output_dir: str) -> None:
    """Remove an earlier run's manifest: from now on this folder's files are being replaced."""
    try:
        os.remove(os.path.join(output_dir, MANIFEST))
    except FileNotFoundError:
        pass


def write_manifest(output_dir: str, record: dict, since: int) -> dict:
    """Write ``output_dir/ftplugins_run.json``: ``record`` plus the artifacts published since ``since``."""
    output_dir = os.path.abspath(output_dir)
    artifacts = {}
    for path in sorted(set(published_since(since, output_dir))):
        rel = os.path.relpath(path, output_dir)
        if rel == MANIFEST or not os.path.isfile(path):
            continue
        artifacts[rel] = {"sha256": file_sha256(path), "bytes": os.path.getsize(path)}
    manifest = {**record, "artifacts": artifacts}
    with staged_dir(output_dir) as tmp:
        with open(os.path.join(tmp, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)
    return manifest


def file_sha256(path: str) -> str:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _hashes:
        _hashes[key] = sha256_file(path)
    return _hashes[key]


def check_manifest(folder: str) -> list[str]:
    """Problems of ``folder`` against its ``ftplugins_run.json`` (empty list: every listed file is intact)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return [f"{folder} has no {MANIFEST}: no run vouches for its files (a run was killed while saving?)"]
    with open(path) as handle:
        artifacts = json.load(handle).get("artifacts", {})
    problems = []
    for rel, expected in artifacts.items():
        file = os.path.join(folder, rel)
        if not os.path.isfile(file):
            problems.append(f"{rel} is missing")
        elif sha256_file(file) != expected["sha256"]:
            problems.append(f"{rel} changed after the run wrote it (sha256 differs)")
    return problems
