"""Writing artifacts so that a crash never leaves a half-written file behind.

Everything is first written into a staging folder *inside* the destination
(``DEST/.ftplugins-staging/…``), so staging and destination are on the same file system even when
the destination is a mount point or its parent is read-only; then each file is moved into place with
``os.replace``, which is atomic on POSIX. Configuration files (``*.json``) move last, so a reader that
sees a new config also sees the new weights. :func:`replace_dir` makes a whole folder (a checkpoint)
appear at once. Files are flushed to disk (``fsync``) before they are moved, so a power loss after the
move cannot leave an empty file under the final name.

What this guarantees: every *file* is either its old or its new version, and a folder moved with
:func:`replace_dir` is either absent, old or new. A save of several files into an existing folder is
not one atomic step (a crash between two moves leaves some new files beside old ones); the run's
``ftplugins_run.json``, written last, records which files belong together (see
:mod:`ftplugins.run_output`). A killed save leaves its staging folder behind; the next run that locks
the folder removes it (:func:`clean_staging`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

#: Hidden folder, inside a destination, that holds saves in progress.
STAGING = ".ftplugins-staging"

#: Published files, in order, as absolute paths (what :mod:`ftplugins.run_output` lists as a run's artifacts).
_published: list[str] = []


@contextlib.contextmanager
def staged_dir(destination: str, replace: bool = False) -> Iterator[str]:
    """Yield an empty folder on ``destination``'s file system; on success publish its files into ``destination``.

    ``replace=True`` also removes whatever else ``destination`` held (except hidden ``.ftplugins*``
    entries), so it ends up exactly the staged content: no stale shards of an earlier save.
    """
    destination = os.path.abspath(destination)
    tmp = _staging_folder(destination, "save-")
    try:
        yield tmp
        publish(tmp, destination, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_if_empty(os.path.join(destination, STAGING))


@contextlib.contextmanager
def folder_replaced_whole(output: str, prefix: str) -> Iterator[str]:
    """Yield a new folder built beside ``output`` (its parent's staging area); on success it replaces ``output`` in
    one rename (:func:`replace_dir`), so a reader sees the old folder or the new one, never a mix; on failure it is
    removed and ``output`` is untouched. For outputs written as a whole (a generated image folder)."""
    import uuid

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staged = staging_path(parent, f"{prefix}-{uuid.uuid4().hex[:12]}")
    os.makedirs(staged)
    try:
        yield staged
        replace_dir(staged, os.path.abspath(output))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        remove_if_empty(os.path.join(parent, STAGING))


def write_rows_and_report(folder: str, rows: list[dict], metadata: str, report: dict, report_name: str,
                          indent: int = 2) -> None:
    """``metadata`` (one JSON row per line, as datasets' imagefolder reads it) and ``report_name`` (JSON) in
    ``folder``."""
    import json

    with open(os.path.join(folder, metadata), "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(folder, report_name), "w") as handle:
        json.dump(report, handle, indent=indent)


def staging_path(destination: str, name: str) -> str:
    """A fixed path ``destination/.ftplugins-staging/name`` (for saves several processes write into)."""
    return os.path.join(os.path.abspath(destination), STAGING, name)


def _staging_folder(destination: str, prefix: str) -> str:
    root = os.path.join(destination, STAGING)
    for _ in range(5):  # another process may remove an empty staging root between our two calls
        os.makedirs(root, exist_ok=True)
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=root)
        except FileNotFoundError:
            continue
    raise OSError(f"could not create a staging folder in {root}")


def publish(src_dir: str, destination: str, replace: bool = False) -> list[str]:
    """Move every file of ``src_dir`` into ``destination`` (created if needed), JSON last; returns their paths."""
    os.makedirs(destination, exist_ok=True)
    files = []
    for root, _dirs, names in os.walk(src_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), src_dir))
    files.sort(key=lambda rel: (rel.endswith(".json"), rel))
    for rel in files:
        fsync_file(os.path.join(src_dir, rel))
    moved = []
    for rel in files:
        target = os.path.join(destination, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(src_dir, rel), target)
        moved.append(target)
    if replace:
        keep = {rel.split(os.sep)[0] for rel in files}
        for entry in os.listdir(destination):
            if entry not in keep and not entry.startswith(".ftplugins"):
                path = os.path.join(destination, entry)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    fsync_dir(destination)
    _published.extend(moved)
    return moved


def replace_dir(staged: str, final: str) -> None:
    """Move the folder ``staged`` to ``final`` (same file system) so that ``final`` is whole at every moment:
    absent, the old folder or the new one. An existing ``final`` is moved aside first, then deleted."""
    fsync_tree(staged)
    parent = os.path.dirname(os.path.abspath(final))
    if os.path.lexists(final):
        aside = staging_path(parent, f"replaced-{os.path.basename(final)}-{uuid.uuid4().hex[:8]}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(final, aside)
        os.rename(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, final)
    fsync_dir(parent)


def clean_staging(folder: str) -> None:
    """Remove what killed saves left in ``folder``'s staging area. Call it only while holding the folder's
    lock (:mod:`ftplugins.output_lock`): another process's save in progress would be removed too."""
    shutil.rmtree(os.path.join(folder, STAGING), ignore_errors=True)


def remove_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def published_since(mark: int, folder: str) -> list[str]:
    """Files this process published into ``folder`` (at any depth) since ``mark = published_mark()``."""
    prefix = os.path.abspath(folder) + os.sep
    return [path for path in _published[mark:] if path.startswith(prefix)]


def published_mark() -> int:
    return len(_published)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str) -> None:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)
