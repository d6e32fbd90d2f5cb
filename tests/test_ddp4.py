"""Four CPU processes (gloo), ONE `accelerate launch` of tests/ddp4_child.py for one plugin per family (adapters:
ssf, sparse: lift, objective: deep_align, data selection: select_kmeans) on 18 rows, which no plugin can split
evenly over 4 ranks: every rank ends with the weights (and select_kmeans's rows) of one process with the same global
batch, so nothing silently assumes 2 ranks or rank 0's shard."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, ddp_flags

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp4_child.py")
# fp32; only the order of the gradient sums differs. deep_align's token weights are functions of a difference of two
# nearly equal log-probs (tests/test_fsdp.py measured ~3e-4 relative), so it gets the looser tolerance.
TIGHT, LOOSE = dict(rtol=1e-4, atol=1e-5), dict(rtol=1e-3, atol=2e-4)


@pytest.mark.slow
def test_four_processes_equal_one_process(tmp_path):
    from ddp4_child import CASES, run_case

    from ftplugins.testing import tiny_llama

    two, one = tmp_path / "ddp4", tmp_path / "one"
    flags = [f if f != "2" else "4" for f in ddp_flags()]  # --num_processes 4 (the port is never "2")
    done = subprocess.run([accelerate_bin(), "launch", *flags, CHILD, str(two), ",".join(CASES)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    start = dict(tiny_llama().named_parameters())
    for name in CASES:
        trainer = run_case(name, str(one), 1)
        assert json.loads((two / name / "ftplugins_run.json").read_text())["world_size"] == 4
        ranks = [torch.load(two / name / f"rank{r}.pt") for r in range(4)]
        alone = torch.load(one / name / "rank0.pt")
        assert alone.keys() == ranks[0].keys() and alone, name
        for key in alone:
            for r in range(1, 4):
                assert torch.equal(ranks[0][key], ranks[r][key]), (name, key, r)
            torch.testing.assert_close(ranks[0][key], alone[key], **(LOOSE if name == "deep_align" else TIGHT),
                                       msg=f"{name}: {key}")
        initial = {k: start[k].detach() if k in start else (torch.ones_like(v) if "scale" in k else torch.zeros_like(v))
                   for k, v in alone.items()}  # an ssf parameter starts at scale 1, shift 0
        moved = [k for k in alone if not torch.equal(alone[k], initial[k])]
        assert moved, f"{name}: training changed nothing"
        if name == "select_kmeans":
            kept = trainer.ftplugins_run.state["select_kmeans"]["indices"]
            assert len(kept) == 6
            for r in range(4):
                assert json.loads((two / name / f"rows{r}.json").read_text()) == kept, r
