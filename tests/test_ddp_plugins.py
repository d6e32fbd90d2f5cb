"""Ten SFT-family plugins under DDP (two CPU processes, gloo), all in ONE `accelerate launch` of
tests/ddp_plugins_child.py, against the same cases run here in one process with the same global batch:
training methods end with the 1-process weights on both ranks; masked_thought ends with equal weights on both ranks,
each rank drawing its own masks (keyed by its process index); the analysis and evaluation plugins write their
report once, from the main process, equal to the 1-process report."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, ddp_flags, launch_failure

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_plugins_child.py")
TRAINING = ("block_lora", "bottleneck", "fewshot_prefix", "many_icl")
REPORTS = {"probe_prune": "probe_prune.json", "mbpp_eval": "mbpp_eval.json", "infusion_eval": "infusion_eval.json"}
# fp32 on both sides; only the order of the gradient sums differs, and the child's Adam eps (ddp_plugins_child.py
# says why) keeps near-zero gradients from amplifying it: measured within 1e-7 for every case.
TIGHT = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(DDP root, 1-process root): the child's 2-process launch, then every case again here in one process."""
    from ddp_plugins_child import CASES, run_case

    two, one = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("one")
    done = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), CHILD, str(two), ",".join(CASES)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, launch_failure(done)
    history = {}
    for name in CASES:
        history[name] = run_case(name, str(one), 1).state.log_history
    return two, one, history


def weights(root, name, rank=0):
    return torch.load(os.path.join(root, name, f"rank{rank}.pt"))


def assert_close_all(a, b, **tolerance):
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING)
def test_training_plugin_under_ddp_equals_one_process(runs, name):
    from ftplugins.testing import tiny_llama

    two, one, _ = runs
    ddp, alone = weights(two, name), weights(one, name)
    assert json.loads(open(os.path.join(two, name, "ftplugins_run.json")).read())["world_size"] == 2
    assert_close_all(ddp, weights(two, name, 1), rtol=0, atol=0)  # DDP: both ranks hold the same weights
    assert_close_all(ddp, alone, **TIGHT)
    start = dict(tiny_llama().named_parameters())
    moved = [k for k in ddp if k not in start or not torch.equal(ddp[k], start[k].detach())]
    assert moved, f"{name}: training changed nothing"


@pytest.mark.slow
def test_masked_thought_ranks_agree_and_draw_their_own_masks(runs):
    from ftplugins.methods.masked_thought.collator import batch_generator
    from ftplugins.methods.masked_thought.masking import mask_response_tokens

    two, _one, _ = runs
    assert_close_all(weights(two, "masked_thought"), weights(two, "masked_thought", 1), rtol=0, atol=0)
    for rank in (0, 1):
        batches = torch.load(os.path.join(two, "masked_thought", f"batches{rank}.pt"))
        assert len(batches) == 2  # one micro-batch per step
        for step, batch in enumerate(batches):
            labels = batch["labels"]
            clean = torch.where(labels != -100, labels, batch["input_ids"])
            seen = batch["input_ids"] != clean
            drawn = {r: mask_response_tokens(clean, labels, 0.5, batch_generator(0, step, 0, r), mask_token_id=0)[1]
                     for r in (0, 1)}
            assert seen.any() and torch.equal(seen, drawn[rank])  # this rank's own generator drew the masks
            assert not torch.equal(drawn[0], drawn[1])  # and the other rank's would have masked other tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", ["intruders", "probe_prune"])
def test_analysis_callbacks_keep_the_loss_log_and_equal_one_process(runs, name):
    """The callbacks log on the main process at every step; the step's loss log (a gather on every rank) stays."""
    two, one, history = runs
    assert_close_all(weights(two, name), weights(one, name), **TIGHT)
    assert_close_all(weights(two, name), weights(two, name, 1), rtol=0, atol=0)
    assert [e["step"] for e in history[name] if "loss" in e] == [1, 2]
    key = "intruders/total" if name == "intruders" else "probe_prune/layer_0"
    assert [e["step"] for e in history[name] if key in e] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_report_written_once_by_the_main_process_equals_one_process(runs, name):
    two, one, _ = runs
    ddp = json.loads(open(os.path.join(two, name, REPORTS[name])).read())
    alone = json.loads(open(os.path.join(one, name, REPORTS[name])).read())
    assert ddp.keys() == alone.keys()
    if name == "probe_prune":  # floats of a model trained in 2 processes: equal to rounding
        assert ddp["behaviour"]["tuned"]["loss"] == pytest.approx(alone["behaviour"]["tuned"]["loss"], rel=1e-4)
        assert ddp["behaviour"]["base"] == alone["behaviour"]["base"] and ddp["probes"].keys() == alone["probes"].keys()
    else:  # generated samples and their scores: the same tokens
        assert ddp == alone
    def written(root):  # the run's own files (not the child's dumps, not the output lock of a live trainer)
        return sorted(f for f in os.listdir(os.path.join(root, name)) if not f.startswith(("rank", "batches", ".")))

    assert written(two) == written(one)


@pytest.mark.slow
def test_soup_of_a_ddp_run_equals_the_one_process_soup(runs):
    from safetensors.torch import load_file

    two, one, _ = runs
    ddp = load_file(os.path.join(two, "soup", "soup", "model.safetensors"))
    alone = load_file(os.path.join(one, "soup", "soup", "model.safetensors"))
    assert_close_all(ddp, alone, **TIGHT)
    last = load_file(os.path.join(two, "soup", "checkpoint-2", "model.safetensors"))
    assert any(not torch.equal(ddp[k], last[k]) for k in ddp)  # a mean of checkpoints 1 and 2, not the last one
    chosen = json.loads(open(os.path.join(two, "soup", "soup", "soup.json")).read())["chosen"]
    assert [os.path.basename(c) for c in chosen] == ["checkpoint-1", "checkpoint-2"]
