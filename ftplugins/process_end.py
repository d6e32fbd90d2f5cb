"""How a command's process ends after a distributed run.

A rank that finished its work, saved its results and left the process group can still be aborted by the
interpreter's own teardown: torch's gloo threads and tensors are destroyed there while Python is half gone, and the
process dies with SIGABRT ("terminate called without an active exception"). The launcher then reports the whole run
as failed and stops the other ranks. Seen in CI about once per hundred 2-process CPU launches, at the end of runs that
had already destroyed their process group. So a command that ran distributed ends the way the interpreter would,
minus that teardown: wait for Python's own threads, run the exit handlers (trackers, logging, temporary folders),
flush, and leave with its status. Only the command-line entry points do this; a library call never exits.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any


def ran_distributed() -> bool:
    """True in a process started by a distributed launcher (``WORLD_SIZE`` > 1) or holding a process group."""
    import torch.distributed as dist

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    return world > 1 or (dist.is_available() and dist.is_initialized())


def leave_process_group() -> None:
    """Destroy the distributed process group this process holds, if any (torch warns when one is left)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_without_teardown(status: int = 0) -> None:
    """End the process as the interpreter would, without its object teardown (see the module docstring)."""
    shutdown_threads = getattr(threading, "_shutdown", None)  # what the interpreter calls first at exit
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def end_distributed_process(status: int = 0) -> None:
    """Leave the process group and exit without the teardown: the last line of a finished distributed rank."""
    leave_process_group()
    exit_without_teardown(status)


def ends_distributed_runs(main: Callable[..., Any]) -> Callable[..., Any]:
    """For a command's ``main``: when it returns normally in a distributed process, leave the group and exit
    without the teardown; otherwise (one process, or an exception) nothing changes."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = main(*args, **kwargs)
        if ran_distributed():
            end_distributed_process(0)
        return result

    return wrapper
