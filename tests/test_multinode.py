"""Two "nodes" on this machine: two `accelerate launch --num_machines 2` invocations (one process each, rendezvous
over 127.0.0.1) train as one job and equal one process with the same global batch; for an adapter and a sparse
method. This is the multi-node recipe of the README, run for real (gloo instead of NCCL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, free_port
from test_train_cli import trl_yaml


def node_command(rank: int, port: int, config: str) -> list[str]:
    # --multi_gpu on CPU-only machines is accelerate's multi-process (gloo) launch; --num_processes is the total
    return [accelerate_bin(), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ftplugins.train", "sft", "--config", config]


def two_nodes(config: str) -> None:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(node_command(rank, port, config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=LAUNCH_TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, (node, (_, err)) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{err[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("plugin, options, artifact", [
    ("ssf", {"learning_rate": 5e-2}, "adapter_model.safetensors"),
    ("lift", {"learning_rate": 1e-2, "lift_rank": 4, "lift_budget_rank": 2, "lift_svd": "full"},
     "model.safetensors"),
])
def test_two_nodes_equal_one_process(plugin, options, artifact, tiny_model_dir, data_dir, tmp_path):
    common = dict(plugins=[plugin], max_steps=3, dataloader_drop_last=True, seed=0, gradient_accumulation_steps=1,
                  **options)
    data = f"{data_dir}/arithmetic"
    one = trl_yaml(tmp_path / "one.yaml", tiny_model_dir, data, tmp_path / "one", per_device_train_batch_size=4,
                   **common)
    two = trl_yaml(tmp_path / "two.yaml", tiny_model_dir, data, tmp_path / "two", per_device_train_batch_size=2,
                   **common)
    single = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--config", one], capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr[-3000:]
    two_nodes(two)

    manifest = json.loads((tmp_path / "two" / "ftplugins_run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["plugins"] == [plugin]
    a, b = load_file(str(tmp_path / "one" / artifact)), load_file(str(tmp_path / "two" / artifact))
    assert a.keys() == b.keys() and a
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    moved = [k for k in a if k in base and not torch.equal(a[k], base[k])] if artifact == "model.safetensors" else a
    assert moved, "training changed nothing"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
