"""The sandboxed code runner against hostile code: each probe asserts that the hostile action failed and that
nothing leaked or survived. Every probe is bounded by itself (a counted fork loop, an untouched 4 GB mapping,
sleepers that end after 30 s, a target trainer that is the test's own child), so a broken sandbox fails the test
without hurting the machine.

Probes that need namespaces run in both modes where the machine permits them: with namespaces they assert
the wall; in the fallback (``namespaces=False``) they assert the documented weaker behaviour, so the
documentation cannot drift from what holds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from ftplugins.errors import FtpluginsError
from ftplugins.eval.sandbox import Limits, SandboxResult, namespaces_available, run_code

NAMESPACES = namespaces_available()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES, reason="this OS forbids user namespaces; the fallback variant of this test runs instead")
MODES = [pytest.param(True, id="namespaces", marks=needs_namespaces), pytest.param(False, id="fallback")]
SMALL = Limits(address_space_mb=512, processes=8, file_size_mb=1, open_files=32, workdir_mb=8)


def run(source: str, tests: str = "", *, namespaces: bool, timeout: float = 10.0, limits: Limits = SMALL,
        **kwargs) -> SandboxResult:
    return run_code(source, tests, timeout=timeout, limits=limits, namespaces=namespaces, **kwargs)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker`` (zombies have none, so only live processes count)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


# --- what the runner is for ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("namespaces", MODES)
def test_correct_code_passes_and_wrong_code_fails(namespaces):
    add = "def add(a, b):\n    return a + b\n"
    assert run(add, "assert add(2, 3) == 5", namespaces=namespaces).passed
    wrong = run(add.replace("+", "-"), "assert add(2, 3) == 5", namespaces=namespaces)
    assert (wrong.passed, wrong.reason, wrong.returncode) == (False, "failed", 1)
    assert "AssertionError" in wrong.output
    assert run("def add(a, b) return", "", namespaces=namespaces).reason == "failed"  # syntax error


@pytest.mark.parametrize("namespaces", MODES)
def test_the_candidate_starts_empty_isolated_and_without_the_trainers_variables(namespaces, monkeypatch):
    monkeypatch.setenv("FTPLUGINS_SANDBOX_SECRET", "x")
    probe = ("import os, sys\nassert not os.listdir('.'), os.listdir('.')\nassert sys.flags.isolated\n"
             "assert 'FTPLUGINS_SANDBOX_SECRET' not in os.environ\nopen('scratch', 'w').write('ok')")
    assert run(probe, namespaces=namespaces).passed


@pytest.mark.parametrize("namespaces", MODES)
def test_an_endless_loop_ends_at_the_timeout(namespaces):
    result = run("while True:\n    pass\n", namespaces=namespaces, timeout=1.0)
    assert (result.passed, result.reason, result.returncode) == (False, "timeout", None)


@pytest.mark.parametrize("namespaces", MODES)
def test_candidate_output_cannot_pose_as_a_sandbox_failure(namespaces):
    """Set-up failures raise (they come through a channel closed at exec); anything the code prints is its own."""
    forged = run("print('sandbox: cannot start the candidate')\nraise SystemExit(126)", namespaces=namespaces)
    assert (forged.passed, forged.reason, forged.returncode) == (False, "failed", 126)


def test_bad_limits_and_timeouts_are_refused():
    with pytest.raises(FtpluginsError, match=r"Limits\(processes=0\)"):
        Limits(processes=0)
    with pytest.raises(FtpluginsError, match=r"timeout=0"):
        run_code("pass", timeout=0)


# --- resource limits ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("namespaces", MODES)
def test_a_fork_bomb_is_bounded_and_its_processes_do_not_survive(namespaces):
    probe = (
        "import os, sys, time\nprint(__file__, flush=True)\nchildren = 0\n"
        "for _ in range(40):\n"  # bounded by the probe itself: 40 sleepers at most, each gone after 30 s
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    children += 1\n"
        "print(children, flush=True)\nsys.exit(0 if children < 40 else 1)\n"
    )
    result = run(probe, namespaces=namespaces)
    if not any(p.startswith("process cap") for p in result.protections):
        pytest.skip("root without a writable pids cgroup: forks are bounded only by the timeout and the final kill")
    script, children = result.output.split()
    assert result.passed, result.output
    assert int(children) < SMALL.processes
    assert processes_with(script) == []


@pytest.mark.parametrize("namespaces", MODES)
def test_memory_beyond_the_address_space_limit_is_refused(namespaces):
    probe = (
        "import mmap\n"
        "for size in (4 << 30, 300 << 20):\n"  # 4 GB reserved, never touched; 300 MB touched (above the 256 MB cap)
        "    try:\n        block = mmap.mmap(-1, size) if size > 1 << 30 else bytearray(size)\n"
        "    except (OSError, MemoryError):\n        continue\n"
        "    raise SystemExit(f'allocated {size} bytes')\n"
    )
    result = run(probe, namespaces=namespaces, limits=Limits(address_space_mb=256, processes=8, file_size_mb=1))
    assert result.passed, result.output


@pytest.mark.parametrize("namespaces", MODES)
def test_file_size_open_files_and_cpu_time_are_capped(namespaces):
    big_file = ("try:\n    open('big', 'wb').write(b'x' * (2 << 20))\nexcept OSError as e:\n    assert e.errno == 27\n"
                "else:\n    raise SystemExit('wrote 2 MiB past a 1 MiB cap')\n")
    assert run(big_file, namespaces=namespaces).passed
    many_files = ("handles = []\ntry:\n    for _ in range(100):\n        handles.append(open('/dev/null'))\n"
                  "except OSError as e:\n    assert e.errno == 24\nelse:\n    raise SystemExit('100 files open')\n")
    assert run(many_files, namespaces=namespaces).passed
    spin = run("while True:\n    pass\n", namespaces=namespaces, timeout=30.0,
               limits=Limits(cpu_seconds=1, processes=8, address_space_mb=512))
    assert spin.reason == "failed" and spin.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


# --- nothing survives ----------------------------------------------------------------------------------------------

SPAWN_SURVIVORS = """
import os, subprocess, sys, time
marker = {marker!r}
sleeper = [sys.executable, "-c", "import time; time.sleep(30)", marker]
subprocess.Popen(sleeper, start_new_session=True)  # a child in a session of its own
if os.fork() == 0:  # a daemon: double fork, new session, orphaned at once
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleeper)
    os._exit(0)
time.sleep(0.5)
print("started", flush=True)
"""


@pytest.mark.parametrize("namespaces", MODES)
@pytest.mark.parametrize("ending", ["passes", "times out"])
def test_children_of_the_candidate_do_not_survive_the_run(namespaces, ending):
    marker = f"ftplugins-sandbox-survivor-{uuid.uuid4().hex}"
    source = SPAWN_SURVIVORS.format(marker=marker) + ("while True:\n    pass\n" if ending == "times out" else "")
    result = run(source, namespaces=namespaces, timeout=5.0)
    assert "started" in result.output
    assert result.reason == ("passed" if ending == "passes" else "timeout")
    assert processes_with(marker) == []


# --- the file system ------------------------------------------------------------------------------------------------

ESCAPE = """
import os, shutil, subprocess
targets = {targets!r}
targets.append(os.path.join(os.path.dirname(os.getcwd()), "escape.txt"))
written = []
for target in targets:
    try:
        with open(target, "w") as handle:
            handle.write("escaped")
        written.append(target)
    except OSError:
        pass
if shutil.which("unshare") and shutil.which("mount"):  # try to undo read-only from a namespace of its own
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                    "mount -o remount,rw / ; mount -o remount,bind,rw / ; touch " + targets[0]],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    if os.path.exists(targets[0]):
        written.append("remount")
print(written)
raise SystemExit(1 if written else 0)
"""


@pytest.mark.parametrize("namespaces", MODES)
def test_writes_outside_the_working_folder(namespaces, tmp_path):
    name = f"ftplugins-sandbox-escape-{uuid.uuid4().hex}"
    targets = [str(tmp_path / name), os.path.join("/tmp", name), os.path.join(os.path.expanduser("~"), name)]
    try:
        result = run(ESCAPE.format(targets=targets), namespaces=namespaces)
        landed = [t for t in targets if os.path.exists(t)]
    finally:
        for target in targets:
            if os.path.exists(target):
                os.remove(target)
    if namespaces:
        assert result.passed, result.output
        assert landed == []
        assert "read-only file system" in result.protections
    else:  # documented: the fallback does not protect the file system
        assert "read-only file system" not in result.protections
        assert str(tmp_path / name) in landed


# --- the trainer: its environment, its pid, its signals -------------------------------------------------------------

TRAINER = """
import json, os, sys
from ftplugins.eval.sandbox import Limits, run_code
probe = sys.argv[1].replace("TRAINER_PID", str(os.getpid()))
result = run_code(probe, timeout=10, namespaces=sys.argv[2] == "1", limits=Limits(processes=8, address_space_mb=512))
print(json.dumps({"output": result.output, "reason": result.reason}))
"""

ENVIRON_AND_SIGNALS = """
import json, os, signal
canary, trainer = "{canary}", TRAINER_PID
found, readable = [], 0
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            with open(f"/proc/{{name}}/environ", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        readable += 1
        if canary.encode() in data:
            found.append(int(name))
kills = []
if {hostile}:
    for kill in (lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.kill(trainer, signal.SIGKILL),
                 lambda: os.killpg(trainer, signal.SIGKILL)):
        try:
            kill()
            kills.append("sent")
        except OSError as e:
            kills.append(e.errno)
print(json.dumps({{"found": found, "readable": readable, "parent": os.getppid(), "trainer": trainer,
                  "kills": kills}}))
"""


def run_trainer(namespaces: bool, hostile: bool) -> tuple[subprocess.CompletedProcess, str]:
    """A stand-in trainer (the test's own child, in its own session) with a canary in its launch environment."""
    canary = f"ftplugins-canary-{uuid.uuid4().hex}"
    probe = ENVIRON_AND_SIGNALS.format(canary=canary, hostile=hostile)
    env = {**os.environ, "FTPLUGINS_TRAINER_TOKEN": canary, "PYTHONPATH": os.pathsep.join(sys.path)}
    trainer = subprocess.run([sys.executable, "-c", TRAINER, probe, "1" if namespaces else "0"], env=env,
                             capture_output=True, text=True, timeout=120, start_new_session=True)
    return trainer, canary


@needs_namespaces
def test_the_trainer_stays_private_and_alive():
    trainer, _ = run_trainer(namespaces=True, hostile=True)
    assert trainer.returncode == 0, trainer.stderr  # alive: the candidate's SIGKILLs did not reach it
    report = json.loads(trainer.stdout)
    probe = json.loads(report["output"])
    assert report["reason"] == "passed"
    assert probe["readable"] >= 1  # the probe could read environ files (its own), and found no canary in any
    assert probe["found"] == []
    assert probe["parent"] == 1  # the supervisor, PID 1 of the sandbox's own namespace
    assert probe["kills"][1:] == [3, 3]  # ESRCH: the trainer's pid does not exist in the sandbox


def test_the_fallback_hides_the_launcher_not_the_trainer():
    """Documented fallback: the candidate's parent is the secret-free launcher, but a same-user process can still
    read the trainer's launch environment through /proc (so the docs tell users to use a container there)."""
    trainer, canary = run_trainer(namespaces=False, hostile=False)
    assert trainer.returncode == 0, trainer.stderr
    probe = json.loads(json.loads(trainer.stdout)["output"])
    assert probe["parent"] != probe["trainer"]
    assert probe["trainer"] in probe["found"] and probe["parent"] not in probe["found"]


# --- the network ---------------------------------------------------------------------------------------------------

NETWORK = """
import json, shutil, socket, subprocess, sys
tcp, udp = {tcp}, {udp}
spawned = '''
import json, socket
results = {{}}
for name, attempt in (
    ("tcp", lambda: socket.create_connection(("127.0.0.1", {tcp}), timeout=2)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leak", ("127.0.0.1", {udp}))),
    ("resolve", lambda: socket.getaddrinfo("localhost", 80)),
):
    try:
        attempt()
        results[name] = "succeeded"
    except OSError as e:
        results[name] = str(e)
print(json.dumps(results))
'''
results = json.loads(subprocess.run([sys.executable, "-I", "-c", spawned], capture_output=True, text=True,
                                     timeout=10).stdout)
try:  # in process, around the patched class: its base is the real socket class
    socket.socket.__mro__[1](socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", tcp))
    results["mro"] = "succeeded"
except OSError as e:
    results["mro"] = str(e)
getent = shutil.which("getent")  # the system resolver, from a program the in-process block cannot touch
found = getent is not None and subprocess.run([getent, "hosts", "localhost"], capture_output=True).returncode == 0
results["getent"] = "succeeded" if found else "failed"
print(json.dumps(results))
"""


@pytest.mark.parametrize("namespaces", MODES)
def test_the_network(namespaces):
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        receiver.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        receiver.setblocking(False)
        source = NETWORK.format(tcp=listener.getsockname()[1], udp=receiver.getsockname()[1])
        result = run(source, namespaces=namespaces)
        speed_bump = run("import socket\ntry:\n    socket.socket()\nexcept OSError as e:\n"
                         "    assert 'disabled' in str(e)\nelse:\n    raise SystemExit(1)\n", namespaces=namespaces)
        assert speed_bump.passed  # the in-process block is there in both modes
        if not namespaces:  # documented: a speed bump only, so nothing more is claimed
            assert "network namespace" not in result.protections
            return
        assert result.passed, result.output
        attempts = json.loads(result.output.strip().splitlines()[-1])
        assert set(attempts) == {"tcp", "udp", "resolve", "mro", "getent"}
        assert "succeeded" not in attempts.values(), attempts
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection arrived
        with pytest.raises(BlockingIOError):
            receiver.recv(16)  # no datagram arrived


def test_the_s3ft_code_judge_uses_the_sandbox():
    from ftplugins.methods.s3ft.judges import resolve_judge

    judge = resolve_judge("code", timeout=5)
    assert judge("def f():\n    return 1", "", {"tests": "assert f() == 1"})
    # A hostile answer that would pass outside the sandbox (it writes to its folder's parent) fails inside it.
    hostile = "import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'x'), 'w').write('x')"
    assert judge(hostile, "", {"tests": ""}) is (not NAMESPACES)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare binary to compare with")
def test_namespaces_are_used_wherever_unshare_works():
    """This machine is the CI machine: if util-linux's unshare can build the namespaces here, the sandbox must
    use them too (no silent fallback)."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
                            "--mount-proc", "true"], capture_output=True, timeout=30)
    assert NAMESPACES == (probe.returncode == 0), probe.stderr
