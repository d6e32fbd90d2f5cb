"""The sparse engine on FSDP2's dim-0 shards (2 CPU processes, gloo): LIFT trains, re-selects and saves its delta
as one process does with the same global batch, and each process keeps the optimizer state of its rows only."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_fsdp import launch

# Small budgets so that selection matters (k < m n), and a re-selection after step 2 of 3.
LIFT = dict(plugins=["lift"], lift_rank=4, lift_budget_rank=2, lift_interval=2)


def dense(delta):
    """``{name: W - W0}`` as whole tensors (the delta files may drop different exact zeros)."""
    out = {}
    for name, entry in delta.tensors.items():
        flat = torch.zeros(entry.numel, dtype=torch.float32)
        flat[entry.flat_indices()] = entry.values.to(torch.float32)
        out[name] = flat.view(entry.shape)
    return out


@pytest.mark.slow
def test_fsdp2_lift_equals_one_process_with_each_rank_holding_its_rows(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftplugins.methods.lift.selection import budget
    from ftplugins.methods.lift.training import lift_targets
    from ftplugins.sparse import load_delta

    data = f"{data_dir}/arithmetic"
    reference = launch(tmp_path, "one", tiny_model_dir, data, "one", LIFT)
    sharded = launch(tmp_path, "fsdp", tiny_model_dir, data, "fsdp", LIFT)

    base = load_file(f"{tiny_model_dir}/model.safetensors")
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(sharded / "model.safetensors"))
    assert a.keys() == b.keys() == base.keys()
    assert any(not torch.equal(a[k], base[k]) for k in a), "training changed no weight"
    for key in a:  # fp32; only the order of the gradient sums differs (see test_fsdp.py)
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)

    one = load_delta(str(reference / "sparse_delta.safetensors"))
    two = load_delta(str(sharded / "sparse_delta.safetensors"))
    assert one.tensors.keys() == two.tensors.keys() and len(one.tensors) > 0
    assert two.metadata.get("global_step") == "3"
    one, two = dense(one), dense(two)
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)
        assert torch.equal(one[key] != 0, two[key] != 0), f"{key}: the trained entries differ"
        torch.testing.assert_close(base[key] + two[key], b[key], rtol=0, atol=1e-6, msg=key)

    # Each process holds the compact state of its rows only: the two counts add up to the 1-process selection.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weights = dict(model.named_parameters())
    total = sum(budget(tuple(weights[n].shape), LIFT["lift_budget_rank"]) for n in lift_targets(model))
    stdout = (tmp_path / "fsdp.stdout").read_text()
    counts = {int(rank): int(n) for rank, n in re.findall(r"rank=(\d) sparse_state_entries=(\d+)", stdout)}
    assert sorted(counts) == [0, 1], stdout[-2000:]
    assert counts[0] + counts[1] == total, (counts, total)
    assert max(counts.values()) < 0.75 * total, (counts, total)  # rows split evenly; the selection roughly so
    print(f"lift under FSDP2: state entries per rank {counts} of {total} in one process")


def test_lift_is_allowed_under_fsdp(monkeypatch, capsys):
    """The trainer check that refuses sara, lt_sft and graft under FSDP (test_fsdp.py) lets lift through, and
    `ftplugins info lift` lists fsdp among its supported modes with no refusal."""
    from ftplugins.cli import main
    from ftplugins.composition import _check_trainer_supported
    from ftplugins.registry import load

    loaded = load("lift")
    run = type("Run", (), {"plugins": [loaded], "args": SimpleNamespace(world_size=2), "trainer_name": "SFTTrainer",
                           "trainer_cls": None, "has_base": staticmethod(lambda name: True)})()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    _check_trainer_supported(run)
    main(["info", "lift"])
    out = capsys.readouterr().out
    assert "fsdp" in out and "refuses fsdp" not in out, out
