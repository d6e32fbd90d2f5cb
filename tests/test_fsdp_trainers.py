"""cls_rl on GRPOTrainer under FSDP2 (two CPU processes, gloo, torch's ``fully_shard``; tests/fsdp_trainers_child.py):
the model really is sharded, GRPO generates and trains through the shards, both ranks end with the same whole
weights, which moved, and cls_rl's reward is logged for every step."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch
import yaml
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, free_port
from test_fsdp import FSDP2_CPU

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_trainers_child.py")


@pytest.mark.slow
def test_cls_rl_under_grpo_fsdp2(tmp_path):
    from ftplugins.testing import tiny_llama

    config = tmp_path / "fsdp2_cpu.yaml"
    config.write_text(yaml.safe_dump({**FSDP2_CPU, "main_process_port": free_port()}))
    done = subprocess.run([accelerate_bin(), "launch", "--config_file", str(config), CHILD, str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    reports = re.findall(r"fsdp_cpu_child: is_fsdp_enabled=True sharded_parameters=([1-9]\d*)", done.stdout)
    assert len(reports) == 2, done.stdout[-3000:]  # both ranks trained a model fully_shard split between them

    ranks = [torch.load(tmp_path / "cls_rl" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    weights = [r["weights"] for r in ranks]
    start = {k: v.detach() for k, v in tiny_llama().named_parameters()}
    assert weights[0].keys() == weights[1].keys() == start.keys()
    for key in weights[0]:  # gathered from the shards: every rank sees the same whole weights
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert any(not torch.equal(weights[0][k], start[k]) for k in start), "GRPO changed no weight"
    steps = [e for e in ranks[0]["log"] if "rewards/cls_rl_exact/mean" in e]
    assert [e["step"] for e in steps] == [1, 2]  # cls_rl's reward scored the completions every step
    assert all(any("rewards/varied_reward/mean" in e for e in r["log"]) for r in ranks)
