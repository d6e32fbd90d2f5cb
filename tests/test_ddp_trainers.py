"""cls_rl (GRPOTrainer), bob (DiffusionTrainer) and gan_augment (transformers.Trainer) under DDP (two CPU processes,
gloo), in ONE `accelerate launch` of tests/ddp_trainers_child.py: both ranks train on the same transformed rows (the
prompts, captions, GAN-augmented rows one process builds) and end with the same weights; gan_augment, whose steps
draw no random numbers, also equals one process with the same global batch. cls_rl also trains under FSDP2
(tests/fsdp_trainers_child.py) and ends where its DDP run does."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import torch
import yaml
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, ddp_flags, free_port
from test_fsdp import FSDP2_CPU

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_trainers_child.py")
FSDP_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_trainers_child.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ddp_trainers_child import CASES

    two = tmp_path_factory.mktemp("ddp")
    done = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), CHILD, str(two), ",".join(CASES)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return two


def rank_files(root, name):
    weights = [torch.load(os.path.join(root, name, f"rank{r}.pt")) for r in (0, 1)]
    seen = [json.loads(open(os.path.join(root, name, f"rows{r}.json")).read()) for r in (0, 1)]
    assert json.loads(open(os.path.join(root, name, "ftplugins_run.json")).read())["world_size"] == 2
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 0
    for key in weights[0]:  # DDP: every rank holds the same weights, bit for bit
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert seen[0]["rows"] == seen[1]["rows"]  # the plugin transformed the dataset the same way on every rank
    return weights[0], seen[0]


@pytest.mark.slow
def test_cls_rl_under_grpo_ddp(runs):
    from ftplugins.testing import tiny_llama

    weights, seen = rank_files(runs, "cls_rl")
    start = dict(tiny_llama().named_parameters())
    assert any(not torch.equal(weights[k], start[k].detach()) for k in weights), "GRPO changed no weight"
    assert all("Which category" in p[-1]["content"] for p in seen["rows"])  # cls_rl's classification prompts
    steps = [e for e in seen["log"] if "rewards/cls_rl_exact/mean" in e]
    assert [e["step"] for e in steps] == [1, 2]  # cls_rl's reward scored the completions of both ranks


@pytest.mark.slow
def test_cls_rl_under_grpo_fsdp2_ends_where_ddp_does(runs, tmp_path):
    """GRPO with cls_rl on 2 FSDP2 processes (the model sharded, generation through the shards): both ranks end with
    the same whole weights, which moved, cls_rl's reward is logged every step, and the weights equal the DDP run's
    (the same per-process seeds draw the same completions; measured: 6e-8 apart, the order of the gradient sums)."""
    config = tmp_path / "fsdp2_cpu.yaml"
    config.write_text(yaml.safe_dump({**FSDP2_CPU, "main_process_port": free_port()}))
    done = subprocess.run([accelerate_bin(), "launch", "--config_file", str(config), FSDP_CHILD, str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    reports = re.findall(r"fsdp_cpu_child: is_fsdp_enabled=True sharded_parameters=([1-9]\d*)", done.stdout)
    assert len(reports) == 2, done.stdout[-3000:]  # both ranks trained a model fully_shard split between them

    ranks = [torch.load(tmp_path / "cls_rl" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    ddp, _ = rank_files(runs, "cls_rl")
    weights = [r["weights"] for r in ranks]
    assert weights[0].keys() == weights[1].keys() == ddp.keys()
    for key in ddp:
        assert torch.equal(weights[0][key], weights[1][key]), key  # gathered from the shards on each rank
        torch.testing.assert_close(weights[0][key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    from ftplugins.testing import tiny_llama

    start = dict(tiny_llama().named_parameters())
    assert any(not torch.equal(weights[0][k], start[k].detach()) for k in ddp), "GRPO changed no weight"
    for rank in ranks:
        steps = [e for e in rank["log"] if "rewards/cls_rl_exact/mean" in e]
        assert [e["step"] for e in steps] == [1, 2]  # cls_rl's reward scored the completions every step


@pytest.mark.slow
def test_bob_under_diffusion_ddp(runs):
    weights, seen = rank_files(runs, "bob")
    assert any(not torch.equal(v, torch.ones_like(v) if "scale" in k else torch.zeros_like(v))
               for k, v in weights.items()), "training changed no SSF parameter"
    assert all(c.startswith("a photo of a ") for c in seen["rows"]) and len(set(seen["rows"])) > 1  # bob_template
    pool = json.loads(open(os.path.join(runs, "bob", "bob_attributes.json")).read())
    assert pool  # the attribute pool, written once into the output folder


@pytest.mark.slow
def test_gan_augment_under_ddp_equals_one_process(runs, tmp_path):
    from ddp_trainers_child import run_case
    from test_gan_augment import TabularClassifier

    weights, seen = rank_files(runs, "gan_augment")
    run_case("gan_augment", str(tmp_path), 1)
    one = torch.load(tmp_path / "gan_augment" / "rank0.pt")
    assert json.loads((tmp_path / "gan_augment" / "rows0.json").read_text())["rows"] == seen["rows"]
    assert len(seen["rows"]) == 40  # 20 real rows and the GAN's 20, the same on every rank and in one process
    for key in one:
        torch.testing.assert_close(weights[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.manual_seed(0)
    start = TabularClassifier.build().linear.weight  # the child seeds the same way before building its model
    assert not torch.equal(one["linear.weight"], start.detach())
    report = json.loads((runs / "gan_augment" / "gan_augment_report.json").read_text())
    assert report == json.loads((tmp_path / "gan_augment" / "gan_augment_report.json").read_text())
