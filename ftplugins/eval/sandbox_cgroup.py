"""A pids cgroup per sandbox run: caps its process count and finds every member to kill, even escaped ones.

RLIMIT_NPROC is not enforced for processes whose real uid is the host's root (the kernel exempts it), and it
counts all of the user's processes when no user namespace separates them; a cgroup's ``pids.max`` bounds the
run alone whoever runs it. Used where this process may create a child of its own pids cgroup: root, or a
delegated cgroup v2 subtree with the pids controller enabled. Elsewhere :meth:`RunCgroup.create` returns None.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

_COUNTER = itertools.count()


def _own_pids_cgroup() -> str | None:
    """The folder of this process's cgroup in a hierarchy that offers the pids controller, if any."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            own = dict((ctl, path) for _, ctl, path in (line.rstrip("\n").split(":", 2) for line in handle))
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            mounts = [line.split() for line in handle]
    except OSError:
        return None
    for fields in mounts:
        tail = fields[fields.index("-") + 1:]
        fstype, mount_point, super_options = tail[0], fields[4], tail[2] if len(tail) > 2 else ""
        if fstype == "cgroup" and "pids" in super_options.split(","):
            path = next((p for ctl, p in own.items() if "pids" in ctl.split(",")), None)
        elif fstype == "cgroup2" and "" in own:
            path = own[""]
            try:
                with open(os.path.join(mount_point + path, "cgroup.subtree_control"), encoding="utf-8") as handle:
                    if "pids" not in handle.read().split():
                        continue
            except OSError:
                continue
        else:
            continue
        if path is not None and os.path.isdir(mount_point + path):
            return mount_point + path
    return None


class RunCgroup:
    """One run's cgroup: ``pids.max`` set, the launcher added before it starts anything, all members killed."""

    def __init__(self, folder: str):
        self.folder = folder

    @classmethod
    def create(cls, max_processes: int) -> RunCgroup | None:
        parent = _own_pids_cgroup()
        if parent is None:
            return None
        folder = os.path.join(parent, f"ftplugins-sandbox-{os.getpid()}-{next(_COUNTER)}")
        try:
            os.mkdir(folder)
        except OSError:
            return None
        cgroup = cls(folder)
        try:
            cgroup._write("pids.max", str(max_processes))
        except OSError:
            cgroup.remove()
            return None
        return cgroup

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.folder, name), "w", encoding="utf-8") as handle:
            handle.write(value)

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def members(self) -> list[int]:
        try:
            with open(os.path.join(self.folder, "cgroup.procs"), encoding="utf-8") as handle:
                return [int(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def kill_all(self, rounds: int = 200) -> bool:
        """SIGKILL every member until none is left (``cgroup.kill`` where the kernel has it); True when empty."""
        try:
            self._write("cgroup.kill", "1")
        except OSError:
            pass
        for _ in range(rounds):
            pids = self.members()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        return not self.members()

    def remove(self) -> None:
        for _ in range(100):  # members that were just killed leave the cgroup a moment later
            try:
                os.rmdir(self.folder)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
