"""The sandbox's launcher: the one process between the trainer and untrusted candidate code.

The trainer (:mod:`ftplugins.eval.sandbox`) starts it as ``python -I -S -B sandbox_launcher.py FOLDER`` with an
empty environment, in a session of its own, so it holds no secrets and is the only process the candidate can
trace back to. It reads ``FOLDER/request.json``, waits for one byte on stdin (the trainer's "you are in your
cgroup now"), runs the candidate and prints one JSON report on stdout.

With namespaces (Linux user namespaces permitted, as root or not) it first enters new user, mount, network and
PID namespaces and forks the supervisor, which is PID 1 there: a fresh ``/proc`` that shows only the sandbox's
processes, ``/`` made read-only recursively, a small tmpfs as working folder, ``/etc/hosts`` and
``/etc/resolv.conf`` masked, no network interface up. The candidate then runs in a nested user namespace as an
unprivileged user (no capabilities, so it cannot undo any of that), with resource limits, in its own session.
When the supervisor exits the kernel kills every process left in the PID namespace.

Without namespaces the launcher supervises directly, as a child subreaper (orphans of the candidate are
re-parented to it) and kills every descendant it can find through ``/proc`` after the candidate ends.

Stdlib only: it runs without site-packages. Importable for its /proc helpers.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
SYS_MOUNT_SETATTR = 442  # the same number on every Linux architecture (syscalls added after 5.1 share one table)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CANDIDATE_UID = 1000  # the candidate's uid inside its own user namespace: not root there, so no capabilities
MASKED_FILES = ("/etc/hosts", "/etc/resolv.conf")  # local name resolution too: every name fails to resolve
OUTPUT_TAIL = 4000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _prctl(libc, option: int, value: int) -> None:
    _check(libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


# --- process tree (also used by the trainer side) -------------------------------------------------------------------

def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
        parents[int(name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children, ...), zombies included."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_pids().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(root: int, rounds: int = 200) -> bool:
    """SIGKILL everything below ``root`` until nothing is left; True when the tree is empty.

    Reaps what it can between rounds: when ``root`` is this process and a subreaper, the orphans of killed
    processes come back to it, so every round sees the whole remaining tree."""
    for _ in range(rounds):
        pids = descendants(root)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if root == os.getpid():
            _reap_children()
        time.sleep(0.005)
    return not descendants(root)


# --- namespaces and mounts ----------------------------------------------------------------------------------------

def _map_ids(inside: int, uid: int, gid: int) -> None:
    """Map ``inside`` to the caller's ids in the parent user namespace (no privilege needed for this one line)."""
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside} {uid} 1")
    _write("/proc/self/gid_map", f"{inside} {gid} 1")


def enter_namespaces(libc) -> None:
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    _map_ids(0, uid, gid)


def _set_read_only(libc, path: str, recursive: bool, read_only: bool = True) -> None:
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY if read_only else 0, attr_clr=0 if read_only else MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)),
           f"mount_setattr({path})")


def prepare_file_system(libc, folder: str, source: str, workdir_bytes: int) -> tuple[str, str]:
    """Inside the new mount namespace: fresh /proc, tmpfs for the script and the working folder, the rest
    read-only. Returns (script path, working folder)."""
    mount = libc.mount
    _check(mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    _check(mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=4m,mode=0755"), "mount tmpfs")
    script, work, empty = (os.path.join(folder, name) for name in ("candidate.py", "work", "empty"))
    _write(script, source)
    _write(empty, "")
    os.mkdir(work)
    options = f"size={workdir_bytes},nr_inodes=4096,mode=0700".encode()
    _check(mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), "mount tmpfs (work)")
    for path in MASKED_FILES:
        if os.path.exists(path):
            _check(mount(empty.encode(), path.encode(), None, MS_BIND, None), f"mask {path}")
    _set_read_only(libc, "/", recursive=True)
    _set_read_only(libc, work, recursive=False, read_only=False)
    # The candidate child writes its own uid_map there; writable /proc files need privileges it does not have.
    _set_read_only(libc, "/proc", recursive=False, read_only=False)
    return script, work


# --- the candidate ------------------------------------------------------------------------------------------------

def _limits(request: dict) -> list[tuple[int, int]]:
    limits = request["limits"]
    return [
        (resource.RLIMIT_AS, limits["address_space_mb"] << 20),
        (resource.RLIMIT_CPU, math.ceil(limits["cpu_seconds"])),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] << 20),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]


def _exec_candidate(libc, request: dict, script: str, work: str, output: int, errors: int, namespaces: bool) -> None:
    """In the forked child: never returns. A failure before exec is written to ``errors`` (closed by a successful
    exec), so the supervisor tells a broken set-up from candidate code that fails: the candidate cannot write there."""
    try:
        os.setsid()  # its own session and group: the supervisor kills the group as a whole
        if namespaces:
            # A nested user namespace as an ordinary user: no capabilities over the supervisor's mounts, so the
            # read-only file system cannot be remounted writable, and its own mounts would be locked read-only.
            _check(libc.unshare(CLONE_NEWUSER), "unshare(user)")
            _map_ids(CANDIDATE_UID, 0, 0)
        for kind, value in _limits(request):
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(work)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, errors)
        os.closerange(errors + 1, 65536)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.execve(request["python"], [request["python"], "-I", "-B", script], env)
    except BaseException as exc:  # noqa: BLE001 - report anything and leave the forked child at once
        os.write(errors, f"{type(exc).__name__}: {exc}".encode())
    os._exit(126)


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """(exit status as subprocess reports it, timed out?) of child ``pid``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        select.select([], [], [], min(left, 0.01))


def supervise(libc, request: dict, script: str, work: str, namespaces: bool) -> dict:
    """Run the candidate to its end or the timeout, then kill its session and every process left below us."""
    output = os.memfd_create("candidate-output", 0)
    errors_in, errors_out = os.pipe()  # close-on-exec
    pid = os.fork()
    if pid == 0:
        _exec_candidate(libc, request, script, work, output, errors_out, namespaces)
    os.close(errors_out)
    exec_error = b"".join(iter(lambda: os.read(errors_in, 4096), b"")).decode("utf-8", "replace")
    returncode, timed_out = _wait(pid, request["timeout"])
    try:
        os.killpg(pid, signal.SIGKILL)  # the candidate's group, passing or not
    except (ProcessLookupError, PermissionError):
        pass
    swept = kill_descendants(os.getpid())
    size = os.fstat(output).st_size
    os.lseek(output, max(0, size - OUTPUT_TAIL), os.SEEK_SET)
    tail = os.read(output, OUTPUT_TAIL).decode("utf-8", "replace")
    return {"returncode": returncode, "timed_out": timed_out, "output": tail, "swept": swept,
            "exec_error": exec_error}


def main(folder: str) -> int:
    with open(os.path.join(folder, "request.json"), encoding="utf-8") as handle:
        request = json.load(handle)
    os.read(0, 1)  # the trainer's go: it has put us into the run's cgroup (when it has one)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: PID 1 then ignores signals from the candidate
    libc = _libc()
    if not request["namespaces"]:
        _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
        script, work = os.path.join(folder, "candidate.py"), os.path.join(folder, "work")
        _write(script, request["source"])
        os.mkdir(work)
        report = supervise(libc, request, script, work, namespaces=False)
        print(json.dumps(report), flush=True)
        return 0
    enter_namespaces(libc)
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        try:
            _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
            script, work = prepare_file_system(libc, folder, request["source"], request["limits"]["workdir_mb"] << 20)
            report = supervise(libc, request, script, work, namespaces=True)
            print(json.dumps(report), flush=True)
        except BaseException as exc:  # noqa: BLE001
            print(f"sandbox: cannot set up the namespaces: {exc}", file=sys.stderr, flush=True)
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
