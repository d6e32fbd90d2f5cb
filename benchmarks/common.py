"""Helpers shared by the harnesses: machine description, memory probes, statistics, output files.

This module imports only the standard library at the top, because the peer script
(:mod:`benchmarks.perf.peer_adapters`) uses it from a separate virtual environment that has no
ftplugins and another transformers.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


# --- statistics --------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return math.nan
    return a / b


def fmt(value: float | None, spec: str = ".3g", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """``cpu: <model>`` or the GPU's name, the label every number of a run carries."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {cpu_model()}"


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when a GPU is visible (unless ``cpu`` is asked for), else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_commit(root: str = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=False)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if tree_is_dirty(root) else "")


def tree_is_dirty(root: str = REPO_ROOT) -> bool:
    """Uncommitted changes (untracked files included): the numbers would name a commit that did not make them."""
    try:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                check=False)
    except OSError:
        return False
    return status.returncode == 0 and bool(status.stdout.strip())


def require_clean_tree(allow_dirty: bool, root: str = REPO_ROOT) -> bool:
    """Refuse to record results from a dirty tree unless ``--allow-dirty``; returns the ``dirty`` label to record.

    A result names the commit that produced it; with uncommitted changes that name is wrong, so such results are
    written only when asked for, and then carry ``machine.dirty = true`` (shown as a marker in BENCHMARKS.md).
    """
    dirty = tree_is_dirty(root)
    if dirty and not allow_dirty:
        raise SystemExit(f"refusing to write benchmark results: the git tree at {root} has uncommitted changes "
                         "(`git status`), so the recorded commit would not be what ran. Commit or stash them, "
                         "or pass --allow-dirty to record the results labelled `dirty: true`.")
    return dirty


def machine_info(device: str, packages: Iterable[str] = (), dirty: bool | None = None) -> dict[str, Any]:
    """What produced the numbers: CPU, cores, threads, load, device, versions, commit (and ``dirty``, when known)."""
    import torch

    info = {
        "device": device,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_mb": _meminfo_mb("MemTotal"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(
            ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "ftplugins", *packages]
        ),
        "git_commit": git_commit(),
        "command": " ".join([os.path.basename(sys.executable), "-m", *_module_argv()]),
    }
    if dirty is not None:
        info["dirty"] = dirty
    if device.startswith("cuda"):
        info["cuda"] = torch.version.cuda
    return info


def _module_argv() -> list[str]:
    """``sys.argv`` with the script path turned back into the ``-m`` module name it was run as."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py") and os.path.abspath(argv[0]).startswith(REPO_ROOT + os.sep):
        module = os.path.relpath(os.path.abspath(argv[0]), REPO_ROOT)[: -len(".py")].replace(os.sep, ".")
        argv[0] = module.removesuffix(".__main__")
    return argv


def _meminfo_mb(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --- memory ------------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS.

    Without ``malloc_trim`` a run's freed arena pages stay resident and the next run of the same
    process could reuse them without raising RSS, which would hide its peak.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Training-phase peak memory above what is resident when :meth:`reset` is called.

    CPU: writing ``5`` to ``/proc/self/clear_refs`` resets the peak RSS (``VmHWM``) to the current
    RSS; after training, ``VmHWM`` minus the RSS at reset is the peak that training added (weights
    already loaded are not counted, activations, gradients and optimizer state are). GPU:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation at
    reset (the caching allocator's reserve is not counted).
    """

    def __init__(self, device: str):
        self.device = device
        self.base_bytes = 0
        self.supported = True

    @property
    def method(self) -> str:
        if self.device.startswith("cuda"):
            return "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus allocated at reset"
        return "VmHWM after training minus VmRSS at reset (reset: echo 5 > /proc/self/clear_refs)"

    def reset(self) -> None:
        release_memory()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base_bytes = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.supported = False  # not Linux, or not allowed: report no memory numbers
        rss = _status_kb("VmRSS")
        self.base_bytes = (rss or 0) * 1024

    def peak_above_base(self) -> float | None:
        """Bytes of peak memory above the reset point (``None`` where it cannot be measured)."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated() - self.base_bytes)
        hwm = _status_kb("VmHWM")
        if not self.supported or hwm is None:
            return None
        return float(hwm * 1024 - self.base_bytes)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- output files ------------------------------------------------------------------------------


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default, allow_nan=True)
        handle.write("\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def publish(out: str, name: str, result: dict[str, Any], text: str) -> dict[str, Any]:
    """Write a harness's ``NAME.json`` and ``NAME.md`` into ``out`` (each atomically), print the table and where they
    went; returns ``result``."""
    write_json(os.path.join(out, f"{name}.json"), result)
    write_text(os.path.join(out, f"{name}.md"), text)
    print(text)
    print(f"wrote {out}/{name}.json, {name}.md")
    return result


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` when matplotlib is missing."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def quiet_warnings() -> None:
    """Deprecation chatter of the libraries (e.g. transformers 5 renames) hides the harness's own lines."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")


def offline_environment() -> None:
    """Benchmarks never download; keep tokenizers' thread pool out of the timings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
