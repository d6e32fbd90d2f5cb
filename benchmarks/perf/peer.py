"""Peers measured side by side, each in a virtual environment of its own (made on request, never in CI).

AdapterHub's ``adapters`` pins transformers 4.57, so it cannot share our environment: ``--peer
adapters`` creates ``benchmarks/.peer-venv`` (first time only; needs PyPI), installs
``torch==2.13.0`` (the CPU build, as ours) then ``adapters``, ``peft`` and ``accelerate`` (pip
picks versions compatible with adapters' transformers), and runs
:mod:`benchmarks.perf.peer_adapters` there on the same model shape, batch shapes, step counts and
repetitions. Its ratios are to PEFT LoRA r=16 measured in that same process, interleaved, so they
sit next to ours (ratios to our own LoRA r=16 row). We never vendor a peer's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.common import REPO_ROOT

VENV = os.path.join(REPO_ROOT, "benchmarks", ".peer-venv")
PEERS = {
    "adapters": {
        "module": "benchmarks.perf.peer_adapters",
        "install": [["torch==2.13.0"], ["adapters", "peft", "accelerate"]],
        "check": "import adapters, peft, accelerate",
    },
}


def venv_python() -> str:
    return os.path.join(VENV, "bin", "python")


def ensure_venv(peer: str, log=print) -> str:
    """The peer environment's interpreter, creating and filling the environment if needed."""
    spec = PEERS[peer]
    python = venv_python()
    if os.path.exists(python) and subprocess.run([python, "-c", spec["check"]], capture_output=True, check=False).returncode == 0:
        return python
    log(f"peer {peer}: creating {VENV} (needs PyPI; torch first so the CPU build is taken) ...")
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    for packages in spec["install"]:
        subprocess.run([python, "-m", "pip", "install", "-q", *packages], check=True)
    subprocess.run([python, "-c", spec["check"]], check=True)
    return python


def run(peer: str, *, model: str, shapes: list[str], steps: int, warmup: int, repeats: int, threads: int | None,
        activation_checkpointing: bool = False, log=print) -> dict[str, Any]:
    """Run the peer script; its JSON result (or ``{"error": ...}`` when the environment cannot be made).
    ``activation_checkpointing``: the ftplugins rows' policy, which the peer's rows then share."""
    from benchmarks.perf import harness

    try:
        python = ensure_venv(peer, log)
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"error": f"could not create the {peer} environment in {VENV}: {exc}"}
    from ftplugins.testing import tiny_tokenizer

    shape = dict(harness.MODELS[model])
    shape.setdefault("vocab_size", len(tiny_tokenizer()))
    with tempfile.TemporaryDirectory(prefix="ftplugins-peer-") as tmp:
        out = os.path.join(tmp, "peer.json")
        argv = [python, "-m", PEERS[peer]["module"], "--model-json", json.dumps({"name": model, **shape}),
                "--batch", ",".join(shapes), "--steps", str(steps), "--warmup", str(warmup),
                "--repeats", str(repeats), "--json", out]
        if threads:
            argv += ["--threads", str(threads)]
        if activation_checkpointing:
            argv.append("--activation-checkpointing")
        log(f"peer {peer}: {' '.join(argv[1:3])} ...")
        done = subprocess.run(argv, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT},
                              check=False)
        if done.returncode != 0:
            return {"error": f"the {peer} peer script failed (exit {done.returncode}); see its output above"}
        with open(out) as handle:
            return json.load(handle)
