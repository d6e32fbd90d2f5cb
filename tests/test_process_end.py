"""A command that ran distributed ends without the interpreter's teardown, but with everything the interpreter
would have done first: Python's threads joined, exit handlers run, output flushed, the status kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from ftplugins.process_end import ends_distributed_runs

    out = sys.argv[1]

    def late_writer():
        time.sleep(0.3)
        open(out + ".thread", "w").write("joined")

    @ends_distributed_runs
    def main(fail):
        threading.Thread(target=late_writer).start()  # not a daemon: the interpreter would wait for it
        atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
        sys.stdout.write("buffered line without a newline")
        if fail:
            raise RuntimeError("the run failed")
        return "returned"

    print(main(len(sys.argv) > 2))
    print("after main")
""")


def run(tmp_path, env_world: str | None, fail: bool = False):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    if env_world is not None:
        env["WORLD_SIZE"] = env_world
    out = str(tmp_path / "marker")
    argv = [sys.executable, "-c", SCRIPT, out] + (["fail"] if fail else [])
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120), tmp_path / "marker"


def test_a_distributed_rank_exits_after_threads_handlers_and_flush_but_never_returns(tmp_path):
    done, marker = run(tmp_path, "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered line without a newline"  # flushed; the caller's code never ran
    assert (tmp_path / "marker.thread").read_text() == "joined"
    assert (tmp_path / "marker.atexit").read_text() == "ran"


def test_one_process_returns_as_before(tmp_path):
    done, _ = run(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("returned\nafter main\n")


def test_a_failed_distributed_run_keeps_its_traceback_and_status(tmp_path):
    done, _ = run(tmp_path, "2", fail=True)
    assert done.returncode == 1
    assert "RuntimeError: the run failed" in done.stderr
    assert (tmp_path / "marker.atexit").read_text() == "ran"  # the normal interpreter exit
