"""The sandboxed code runner: run untrusted Python (model-written code plus its unit tests) and say if it passed.

One runner for everything that executes untrusted code (s3ft's ``code`` judge, the MBPP pass@k harness):
``run_code(source, tests, timeout=...) -> SandboxResult``. What holds, on Linux:

Always
  * resource limits set in the candidate before exec (:class:`Limits`): address space, CPU seconds, file size,
    processes, open files, no core files;
  * a launcher between the trainer and the candidate, started with an empty environment in its own session:
    the candidate's parent is the launcher, never the trainer, and its environment holds no secrets; the
    candidate runs ``python -I`` with a fixed, minimal environment in an empty working folder;
  * after every run, passing or not: the candidate's process group killed, then every process left below the
    launcher (it is a child subreaper, so orphans come back to it), then the launcher's own group;
  * where this process may create a pids cgroup (root; a delegated cgroup v2 subtree): the run's process count
    capped by ``pids.max`` and every member of the cgroup killed at the end, escaped or not;
  * the in-process network block: ``socket`` creation and name resolution raise ``OSError`` in the candidate's
    interpreter. A speed bump, not a wall: code can reach the original classes or spawn a program.

With user namespaces (``namespaces_available()``: root, or unprivileged user namespaces permitted)
  * new PID namespace with its own ``/proc``: the trainer is neither visible nor signallable, no other
    process's ``/proc/<pid>/environ`` can be read, and when the run ends the kernel kills whatever is left;
  * new network namespace with no interface up: no connection, not even to the host's loopback, no DNS;
    ``/etc/hosts`` and ``/etc/resolv.conf`` are masked, so no name resolves;
  * every mount read-only, the working folder a size-capped tmpfs that disappears with the run; the candidate
    runs as an unprivileged user of a nested user namespace, so it cannot remount anything writable.
  The candidate can still *read* what the trainer's user may read (read-only, and with nowhere to send it but
  its own output and the pass/fail bit): keep secrets out of files that user can read, or run in a container.

Without user namespaces (a kernel or a security module forbids them) the file system is writable wherever the
trainer's user may write, ``/proc/<trainer>/environ`` is readable and the trainer signallable by the candidate
(same user), the network is open to spawned programs, RLIMIT_NPROC counts all of the user's processes, and
code that kills its launcher first can leave processes behind unless the run's cgroup catches them. A warning
says so once; run untrusted code in a container there. ``SandboxResult.protections`` lists what held.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ftplugins.errors import FtpluginsError
from ftplugins.eval.sandbox_cgroup import RunCgroup
from ftplugins.eval.sandbox_launcher import descendants

logger = logging.getLogger(__name__)

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
LAUNCHER_GRACE = 10.0  # seconds the trainer allows the launcher beyond the candidate's timeout before it kills it
LAUNCHER_PROCESSES = 1  # the launcher, counted in the run's pids cgroup (plus the supervisor with namespaces)

NO_NETWORK = '''\
import socket as _s, _socket as _cs
def _off(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
class _NoSocket(_s.socket):
    def __init__(self, *args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
_s.socket = _cs.socket = _NoSocket
for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
              "socketpair", "fromfd"):
    if hasattr(_s, _name):
        setattr(_s, _name, _off)
    if hasattr(_cs, _name):
        setattr(_cs, _name, _off)
del _s, _cs, _off, _NoSocket, _name
'''


@dataclass(frozen=True)
class Limits:
    """Per-process resource limits of the candidate (and the size of its working folder with namespaces).

    Memory in MiB. ``cpu_seconds`` defaults to the run's timeout rounded up plus one (a backstop to the wall-clock
    timeout). ``processes`` counts threads too; all processes of a run together stay under
    ``processes * address_space_mb``."""

    address_space_mb: int = 1024
    cpu_seconds: float | None = None
    file_size_mb: int = 16
    processes: int = 16
    open_files: int = 64
    workdir_mb: int = 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value is not None and not value > 0:
                raise FtpluginsError(f"sandbox Limits({name}={value!r}): expected a positive number; "
                                     f"leave it out for the default ({getattr(Limits, name)!r}).")


@dataclass(frozen=True)
class SandboxResult:
    """``passed``: exited 0 within the timeout. ``reason``: passed, failed, timeout or "sandbox error: ..."."""

    passed: bool
    returncode: int | None
    reason: str
    output: str = ""
    protections: tuple[str, ...] = field(default=())


@functools.lru_cache(maxsize=None)
def namespaces_available() -> bool:
    """Whether this machine lets the sandbox use user, mount, network and PID namespaces (probed once)."""
    if sys.platform != "linux":
        return False
    try:
        result = _run("pass", timeout=10.0, limits=Limits(), namespaces=True)
    except FtpluginsError as exc:
        result = SandboxResult(False, None, str(exc))
    if not result.passed:
        logger.warning(
            "sandbox: user namespaces are not available here (%s); untrusted code runs with resource limits and "
            "a final kill only: it can write where this user can, read this process's environment through "
            "/proc, signal it and reach the network from a spawned program. Run it inside a container.",
            result.reason + (": " + result.output.strip()[-300:] if result.output.strip() else ""),
        )
    return result.passed


def run_code(source: str, tests: str = "", *, timeout: float = 10.0, limits: Limits | None = None,
             namespaces: bool | None = None, block_sockets: bool = True) -> SandboxResult:
    """Run ``source`` followed by ``tests`` as one Python script in the sandbox; passed when it exits 0 in time.

    ``namespaces``: None uses them where the machine permits (see :func:`namespaces_available`), False runs the
    weaker fallback on purpose, True insists (a sandbox error where not permitted). ``block_sockets`` prepends
    the in-process network block (on by default; the network namespace is the wall where it exists)."""
    if not timeout > 0:
        raise FtpluginsError(f"run_code(timeout={timeout!r}): expected a positive number of seconds.")
    if sys.platform != "linux":
        raise FtpluginsError(
            f"ftplugins.eval.sandbox runs untrusted code on Linux only (it relies on /proc, prctl and namespaces); "
            f"this is {sys.platform}: run the code judge or harness on Linux or in a Linux container."
        )
    limits = limits or Limits()
    if namespaces is None:
        namespaces = namespaces_available()
    script = (NO_NETWORK + "\n" if block_sockets else "") + source + "\n\n" + tests + "\n"
    return _run(script, timeout=timeout, limits=limits, namespaces=namespaces)


def _run(script: str, *, timeout: float, limits: Limits, namespaces: bool) -> SandboxResult:
    cpu_seconds = limits.cpu_seconds if limits.cpu_seconds is not None else math.ceil(timeout) + 1
    request = {"source": script, "timeout": timeout, "python": sys.executable, "namespaces": namespaces,
               "limits": {**asdict(limits), "cpu_seconds": cpu_seconds}}
    with tempfile.TemporaryDirectory(prefix="ftplugins-sandbox-", ignore_cleanup_errors=True) as folder:
        with open(os.path.join(folder, "request.json"), "w", encoding="utf-8") as handle:
            json.dump(request, handle)
        report_path, log_path = os.path.join(folder, "report.json"), os.path.join(folder, "launcher.log")
        with open(report_path, "wb") as report, open(log_path, "wb") as log:
            launcher = subprocess.Popen([sys.executable, "-I", "-S", "-B", LAUNCHER, folder], stdin=subprocess.PIPE,
                                        stdout=report, stderr=log, env={}, start_new_session=True, close_fds=True)
        cgroup = None
        try:
            # Before the go, so that everything the run starts is in the cgroup.
            cgroup = _cgroup_for(launcher.pid, limits.processes + LAUNCHER_PROCESSES + int(namespaces))
            try:
                launcher.stdin.write(b"g")
                launcher.stdin.close()
            except BrokenPipeError:
                pass  # the launcher died at once; its log says why
            finished = _wait_without_reaping(launcher.pid, timeout + LAUNCHER_GRACE)
        finally:
            _kill_everything(launcher, cgroup)
        return _result(report_path, log_path, finished, launcher.returncode, namespaces, cgroup is not None)


def _cgroup_for(pid: int, max_processes: int) -> RunCgroup | None:
    cgroup = RunCgroup.create(max_processes)
    if cgroup is None:
        return None
    try:
        cgroup.add(pid)
    except OSError:  # e.g. a cgroup v2 subtree we may create but not move processes into
        cgroup.remove()
        return None
    return cgroup


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit but leave it a zombie, so that its process group id cannot be reused before we
    kill the group."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # something else in this process reaped it
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([], [], [], min(left, 0.01))


def _kill_everything(launcher: subprocess.Popen, cgroup: RunCgroup | None) -> None:
    """Kill the launcher's whole tree and group, reap it, then every member of the run's cgroup."""
    leftovers = descendants(launcher.pid)
    for pid in [launcher.pid, *leftovers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    launcher.wait()
    if cgroup is not None:
        if not cgroup.kill_all():
            logger.warning("sandbox: processes of cgroup %s survived SIGKILL", cgroup.folder)
        cgroup.remove()


def _protections(namespaces: bool, cgroup: bool) -> tuple[str, ...]:
    held = ["resource limits", "launcher without secrets", "kill after run"]
    if cgroup:
        held.append("process cap: cgroup")
    if namespaces:
        held += ["pid namespace", "network namespace", "read-only file system"]
        if os.geteuid() != 0:
            held.append("process cap: rlimit")
    elif os.geteuid() != 0:
        held.append("process cap: rlimit (all of the user's processes)")
    return tuple(held)


def _result(report_path: str, log_path: str, finished: bool, exit_code: int | None, namespaces: bool,
            cgroup: bool) -> SandboxResult:
    protections = _protections(namespaces, cgroup)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        log = handle.read()[-2000:]
    if not finished:
        return SandboxResult(False, None, "sandbox error: the launcher did not finish; killed", log, protections)
    try:
        with open(report_path, encoding="utf-8") as handle:
            report = json.loads(handle.read())
    except (OSError, ValueError):
        return SandboxResult(False, None, f"sandbox error: the launcher exited {exit_code} without a report",
                             log, protections)
    returncode, output = report["returncode"], report["output"]
    if not report["swept"]:
        logger.warning("sandbox: processes of a candidate survived the launcher's sweep; the final kill ran after it")
    if report["timed_out"]:
        return SandboxResult(False, None, "timeout", output, protections)
    if report["exec_error"]:  # before the candidate's code ran: a set-up problem, never the candidate's doing
        raise FtpluginsError(
            f"sandbox: cannot start the candidate interpreter {sys.executable} ({report['exec_error']}); it must be "
            "executable and its standard library readable by this user; with namespaces=True the OS must also "
            "permit a nested user namespace."
        )
    return SandboxResult(returncode == 0, returncode, "passed" if returncode == 0 else "failed", output, protections)
