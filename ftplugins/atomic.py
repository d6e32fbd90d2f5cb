"""Writing artifacts so that a crash never leaves a half-written file behind.

Everything is first written into a temporary folder beside the destination (same filesystem),
then each file is moved into place with ``os.replace``, which is atomic on POSIX. Configuration
files (``*.json``) move last, so a reader that sees a new config also sees the new weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def staged_dir(destination: str) -> Iterator[str]:
    """Yield a temporary folder; on success publish its files into ``destination``."""
    destination = os.path.abspath(destination)
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=parent)
    try:
        yield tmp
        publish(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(src_dir: str, destination: str) -> None:
    """Move every file of ``src_dir`` into ``destination`` (created if needed), JSON last."""
    os.makedirs(destination, exist_ok=True)
    files = []
    for root, _dirs, names in os.walk(src_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), src_dir))
    files.sort(key=lambda rel: (rel.endswith(".json"), rel))
    for rel in files:
        target = os.path.join(destination, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(src_dir, rel), target)


def replace_dir(src_dir: str, destination: str) -> None:
    """Swap the complete folder ``src_dir`` in as ``destination``: nothing of an earlier ``destination`` stays.

    The old folder is renamed aside, the new one renamed in (both atomic on POSIX), then the old one deleted;
    a reader sees the old folder or the new one, never a mix (at worst, after a crash, no folder)."""
    destination = os.path.abspath(destination)
    old = None
    if os.path.exists(destination):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.old-", dir=os.path.dirname(destination))
        os.rename(destination, os.path.join(old, "previous"))
    os.rename(src_dir, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
