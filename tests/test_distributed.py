"""Two-process DDP on CPU (gloo) through `accelerate launch -m ftplugins.train` equals one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import trl_yaml

# A launch that hangs (a rank stuck in gloo's rendezvous) fails its test after this long instead of holding CI.
LAUNCH_TIMEOUT = 600


def free_port() -> int:
    """A port nobody listens on now: every launch gets its own rendezvous, never a store a previous (or a still
    exiting) launch left on accelerate's default port 29500."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_flags() -> list[str]:
    # `accelerate launch --cpu --num_processes 2` silently runs ONE process (DESIGN.md); these flags give two.
    return ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def launch_failure(done) -> str:
    """A failed launch's story: each rank's own lines first (``[rankN]:``, where its traceback is; the launcher
    interleaves them and a tail alone often shows only the rank that waited on the crashed one), then the tail."""
    ranks = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
    first = {}
    for line in ranks:
        first.setdefault(line.split("]")[0], []).append(line)
    return "\n".join(line for lines in first.values() for line in lines[:40]) + "\n...\n" + done.stderr[-3000:]


def accelerate_bin() -> str:
    return shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"


def single_vs_two_processes(tmp_path, model_dir, data, **options):
    """Train with ``options`` once in 1 process (batch 4) and once under DDP (2 x 2, the same global
    batch); returns (base, one, two) state dicts, after checking both runs and their world sizes."""
    common = dict(max_steps=3, dataloader_drop_last=True, seed=0, gradient_accumulation_steps=1, **options)
    one = trl_yaml(tmp_path / "one.yaml", model_dir, data, tmp_path / "one", per_device_train_batch_size=4, **common)
    two = trl_yaml(tmp_path / "two.yaml", model_dir, data, tmp_path / "two", per_device_train_batch_size=2, **common)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--config", one],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), "-m", "ftplugins.train", "sft", "--config", two],
                         capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)
    assert ddp.returncode == 0, launch_failure(ddp)
    assert json.loads((tmp_path / "one" / "ftplugins_run.json").read_text())["world_size"] == 1
    assert json.loads((tmp_path / "two" / "ftplugins_run.json").read_text())["world_size"] == 2
    base = load_file(os.path.join(model_dir, "model.safetensors"))
    return base, load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))


def ddp_command(form, config):
    """The two launch forms users have: our CLI, and the wrapper around TRL's unmodified sft.py."""
    if form == "train":
        return ["-m", "ftplugins.train", "sft", "--config", config]
    import trl.scripts.sft

    # TRL's script ignores the YAML keys it does not know (plugins:, ssf_*): the wrapper reads them.
    return ["-m", "ftplugins.run", "--config", config, "--", trl.scripts.sft.__file__, "--config", config]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["train", "run"])
def test_two_process_ddp_matches_one_process(form, tiny_model_dir, data_dir, tmp_path):
    common = dict(plugins=["ssf"], max_steps=3, learning_rate=5e-2, dataloader_drop_last=True, seed=0,
                  gradient_accumulation_steps=1)
    one = trl_yaml(tmp_path / "one.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "one",
                   per_device_train_batch_size=4, **common)
    two = trl_yaml(tmp_path / "two.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "two",
                   per_device_train_batch_size=2, **common)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--config", one],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), *ddp_command(form, two)],
                         capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)
    assert ddp.returncode == 0, launch_failure(ddp)

    manifest = json.loads((tmp_path / "two" / "ftplugins_run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["plugins"] == ["ssf"]
    assert json.loads((tmp_path / "one" / "ftplugins_run.json").read_text())["world_size"] == 1

    a = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    init_scale = torch.ones(())
    moved = [k for k in a if not torch.allclose(a[k], init_scale if "scale" in k else torch.zeros(()))]
    assert moved, "training changed no SSF parameter"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
