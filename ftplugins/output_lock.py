"""One writer per output folder: an exclusive ``flock`` on ``FOLDER/.ftplugins.lock``.

The kernel releases an ``flock`` when its holder exits, however it exits (``kill -9`` included), so a
lock file left by a dead process is never stale: the next run simply takes it. A holder that releases
normally deletes the file while still holding it; a process that locked a file just deleted sees that
its path now names another file (or none) and tries again, so two processes never both hold "the" lock.
The file holds the current holder's pid, host, start time and command line, so a refused run can say who
holds the folder.
Within one process the lock is re-entrant (two trainers built one after the other on the same folder,
as a notebook or a resume test does, share it); it is meant to stop a *second process*.
On network file systems ``flock`` is as good as the server's locking (Linux NFS clients map it to
byte-range locks, which work across clients).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time

from .errors import FtpluginsError

LOCK_FILE = ".ftplugins.lock"

_log = logging.getLogger("ftplugins.output_lock")
_held: dict[str, list] = {}  # real path of the folder -> [fd, holders]
_mutex = threading.Lock()


class OutputFolderInUseError(FtpluginsError):
    """Another process holds the output folder's lock."""


class OutputLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) gives it up, once."""

    def __init__(self, folder: str):
        self.folder = folder
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _mutex:
            entry = _held.get(self.folder)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.folder]
                try:
                    os.remove(os.path.join(self.folder, LOCK_FILE))  # while still holding it, see above
                except OSError:
                    pass
                os.close(entry[0])  # closing the last descriptor releases the flock

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output_dir(folder: str, what: str = "a run") -> OutputLock | None:
    """Take ``folder``'s lock (creating the folder) or raise :class:`OutputFolderInUseError` naming the holder.

    Returns ``None`` (after a warning) where the file system does not support locks at all.
    """
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    with _mutex:
        if key in _held:
            _held[key][1] += 1
            return OutputLock(key)
        path = os.path.join(key, LOCK_FILE)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputFolderInUseError(
                        f"output folder {folder!r} is in use by another run ({holder}); wait for it to finish or "
                        "choose another output folder (the lock goes away by itself when that process exits, even "
                        "if killed)"
                    ) from None
                _log.warning("cannot lock %s (%s); two runs into it would not be refused", folder, exc)
                return None
            if _same_file(fd, path):
                break
            os.close(fd)  # its holder deleted it as we locked it: lock the file now at that path
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
        os.write(fd, json.dumps(record).encode())
        _held[key] = [fd, 1]
        return OutputLock(key)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "holder unknown"
    return (f"{record.get('what', 'a run')}, pid {record.get('pid')} on {record.get('host')} since "
            f"{record.get('since')}: {record.get('command', '')}")
