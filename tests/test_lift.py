"""LIFT: the selection rule, the plugin (freezing, optimizer, refresh, delta), resume, bf16, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.lift import plugin, select
from ftplugins.sparse.delta import apply_delta, load_delta
from ftplugins.sparse.trainer import sparse_optimizer_of
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer

SMALL = dict(lift_rank=4, lift_budget_rank=2)  # k = (m + n) * 2 entries of each 32x32 ... 64x32 weight
LINEAR = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in
          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")]


# --- the selection rule ----------------------------------------------------------------------------


def numpy_lift_mask(weight: np.ndarray, rank: int, k: int) -> np.ndarray:
    """The definition, written independently: top-k |entries| of the rank-r truncated SVD."""
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vt[:rank]
    order = np.argsort(-np.abs(approx), axis=None, kind="stable")
    mask = np.zeros(weight.size, dtype=bool)
    mask[order[:k]] = True
    # the k-th and (k+1)-th magnitudes are far apart, so fp32 vs fp64 cannot swap them
    magnitudes = np.sort(np.abs(approx), axis=None)[::-1]
    assert k == weight.size or magnitudes[k - 1] - magnitudes[k] > 1e-5
    return mask.reshape(weight.shape)


@pytest.mark.parametrize("rank,kwargs,k", [
    (3, {"budget_rank": 2}, (24 + 40) * 2),  # LoRA-rank parity: (m + n) r
    (3, {}, (24 + 40) * 3),  # budget rank defaults to the SVD rank
    (5, {"density": 0.1}, 96),
    (1, {"k": 10}, 10),
])
@pytest.mark.parametrize("svd", ["gram", "full"])
@pytest.mark.parametrize("transpose", [False, True])  # the Gram matrix of the smaller side either way
def test_mask_equals_an_independent_computation(rank, kwargs, k, svd, transpose):
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    weight = weight.T.contiguous() if transpose else weight
    mask = select(weight, rank=rank, svd=svd, **kwargs)
    assert mask.dtype == torch.bool and mask.shape == weight.shape and int(mask.sum()) == k
    assert np.array_equal(mask.numpy(), numpy_lift_mask(weight.numpy(), rank, k))
    assert not torch.equal(mask, select(weight, rank=24, **kwargs))  # rank reduction matters (not just |W|)


def test_budget_is_capped_at_the_matrix_and_rank_at_min_dimension():
    weight = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    assert select(weight, rank=100).all()  # (8 + 6) * 100 > 48 entries: everything
    assert torch.equal(select(weight, rank=100, k=5), select(weight, rank=6, k=5))  # r capped at 6: |W| itself
    top5 = torch.topk(weight.abs().view(-1), 5).indices
    assert set(select(weight, rank=6, k=5).view(-1).nonzero().view(-1).tolist()) == set(top5.tolist())
    with pytest.raises(ValueError, match="2-D"):
        select(torch.randn(5), rank=2)


def test_randomized_svd_is_seeded_and_exact_on_low_rank_matrices():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(60, 4, generator=g) @ torch.randn(4, 50, generator=g)  # rank 4 exactly
    before = torch.random.get_rng_state()
    fast = select(weight, rank=4, k=300, svd="randomized", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    assert torch.equal(fast, select(weight, rank=4, k=300, svd="randomized", seed=3))
    assert torch.equal(fast, select(weight, rank=4, k=300))


# --- options -----------------------------------------------------------------------------------------


def test_baseline_selections_are_the_papers_magnitude_and_seeded_random_rules():
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    magnitude = select(weight, rank=3, budget_rank=2, selection="magnitude")
    order = np.argsort(-np.abs(weight.numpy()), axis=None, kind="stable")[: (24 + 40) * 2]
    assert int(magnitude.sum()) == (24 + 40) * 2 and set(magnitude.view(-1).nonzero().view(-1).tolist()) == set(order)
    assert not torch.equal(magnitude, select(weight, rank=3, budget_rank=2))  # principal differs from |W| at rank 3
    draw = lambda **kw: select(weight, density=0.1, selection="random", **kw)  # noqa: E731
    assert int(draw(seed=1, name="a").sum()) == 96
    assert torch.equal(draw(seed=1, name="a"), draw(seed=1, name="a"))  # the same at every refresh and process
    assert not torch.equal(draw(seed=1, name="a"), draw(seed=1, name="b"))  # weights of one shape differ
    assert not torch.equal(draw(seed=1, name="a"), draw(seed=2, name="a"))
    assert torch.equal(draw(seed=1, name="a"), select(weight * 5, density=0.1, selection="random", seed=1, name="a"))


def test_plugin_module_does_not_import_torch():
    code = ("import sys, ftplugins.methods.lift as m, ftplugins.methods.lift.options, ftplugins.sparse.cli; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lift"


@pytest.mark.parametrize("options", [
    {"lift_rank": 0}, {"lift_budget_rank": -1}, {"lift_density": 0.0}, {"lift_density": 1.5},
    {"lift_interval": -1}, {"lift_svd": "qr"}, {"lift_rnak": 4}, {"lift_selection": "largest"},
])
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["lift"], **options)


def test_options_parse_from_the_command_line():
    from transformers import HfArgumentParser

    from ftplugins.methods.lift.options import LiftOptions

    (opts,) = HfArgumentParser(LiftOptions).parse_args_into_dataclasses(
        ["--lift_rank", "64", "--lift_density", "0.05", "--lift_interval", "0", "--lift_svd", "randomized",
         "--lift_save_delta", "false"])
    assert opts == LiftOptions(lift_rank=64, lift_density=0.05, lift_interval=0, lift_svd="randomized",
                               lift_save_delta=False)
    assert LiftOptions().lift_density is None and LiftOptions().lift_budget_rank == 128


# --- what trains ---------------------------------------------------------------------------------------


def test_targets_are_the_linear_weights_except_the_head():
    model = tiny_llama()
    run = SimpleNamespace(state={})
    plugin.prepare_model(run=run, model=model)
    assert run.state["lift"]["targets"] == LINEAR
    assert [n for n, p in model.named_parameters() if p.requires_grad] == LINEAR  # embeddings, norms, head frozen


def test_unsupported_models_are_refused():
    no_linear = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(UnsupportedModelError, match="torch.nn.Linear"):
        plugin.prepare_model(run=SimpleNamespace(state={}), model=no_linear)
    import peft

    lora = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(FtpluginsError, match="PEFT adapter"):
        plugin.prepare_model(run=SimpleNamespace(state={}), model=lora)
    with pytest.raises(FtpluginsError, match="bf16=True"):
        plugin.validate(run=SimpleNamespace(args=SimpleNamespace(fp16=True)))


# --- training through compose ------------------------------------------------------------------------


def lift_train(output_dir, model=None, stop_at=None, resume=False, options=None, **arg_overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["lift"], **{**SMALL, **(options or {})})
    values = dict(max_steps=4, learning_rate=2e-2, weight_decay=0.1, per_device_train_batch_size=4,
                  gradient_accumulation_steps=2, max_grad_norm=1.0)
    values.update(arg_overrides)
    model = model if model is not None else tiny_llama()
    trainer = cls(model=model, args=cpu_args(SFTConfig, output_dir, **values), train_dataset=arithmetic_dataset(64),
                  processing_class=tiny_tokenizer(), callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def test_training_changes_exactly_the_selected_entries_of_linear_weights(tmp_path):
    trainer = lift_train(tmp_path, options={"lift_interval": 0})
    optimizer = sparse_optimizer_of(trainer.optimizer)
    assert optimizer is not None and optimizer.steps == 4
    total = 0
    for name, param in trainer.model.named_parameters():
        before = trainer.initial[name]
        if name not in LINEAR:
            assert torch.equal(param, before), name  # embeddings, norms, lm_head: bitwise frozen
            continue
        mask = select(before, rank=4, budget_rank=2)
        m, n = param.shape
        assert int(mask.sum()) == (m + n) * 2
        assert torch.equal(optimizer.state[param]["indices"], mask.view(-1).nonzero().view(-1))
        # every selected entry moved (weight decay alone moves it), nothing else did
        assert torch.equal(param.detach() != before, mask), name
        total += (m + n) * 2
    # state: two fp32 moments + int32 indices + the origin values for the delta, for Σk entries only
    assert optimizer.selected_numel() == total
    assert sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in optimizer.state.values()) == 2 * total
    assert optimizer.state_nbytes() == total * (4 + 4 + 4 + 4)  # moments, int32 index, origin value
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert len(norms) == 4 and all(n > 0 for n in norms)  # the Trainer logs the compact gradients' norm

    delta = load_delta(str(tmp_path / "sparse_delta.safetensors"))
    assert delta.metadata["method"] == "lift" and sorted(delta.tensors) == sorted(LINEAR)
    assert delta.nnz == total
    restored = apply_delta({n: t.clone() for n, t in trainer.initial.items()}, delta)
    assert all(torch.equal(restored[n], p) for n, p in trainer.model.named_parameters())
    manifest = json.loads((tmp_path / "ftplugins_run.json").read_text())
    assert manifest["plugins"] == ["lift"] and manifest["options"]["lift"]["lift_rank"] == 4


def test_random_selection_trains_a_seeded_draw_per_weight_through_compose(tmp_path):
    from ftplugins.methods.lift.selection import random_scores, topk_indices

    trainer = lift_train(tmp_path, options={"lift_selection": "random", "lift_interval": 2}, seed=3)
    optimizer = sparse_optimizer_of(trainer.optimizer)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    drawn = []
    for param, state in optimizer.state.items():
        name = names[id(param)]
        count = sum(param.shape) * 2
        expected = topk_indices(random_scores(param.shape, 3, name), count)
        assert torch.equal(state["indices"].long(), expected), name  # still the seed's draw after two refreshes
        assert torch.equal(param.detach().view(-1) != trainer.initial[name].view(-1),
                           torch.zeros(param.numel(), dtype=torch.bool).index_fill_(0, expected, True)), name
        drawn.append(expected)
    assert len(drawn) == len(LINEAR) and not torch.equal(drawn[0], drawn[1])  # q_proj and k_proj: one shape
    assert load_delta(str(tmp_path / "sparse_delta.safetensors")).metadata["lift_selection"] == "random"


def test_resume_matches_uninterrupted_across_a_refresh(tmp_path):
    """Refresh every 2 steps, checkpoint at 3: the resumed run must restore the mask chosen at step 2 and
    the moments, then refresh at step 4 as the uninterrupted run does."""
    options = {"lift_interval": 2}
    common = dict(max_steps=6, save_strategy="steps", save_steps=3)
    straight = lift_train(tmp_path / "straight", options=options, **common)
    stopped = lift_train(tmp_path / "resumed", options=options, stop_at=3, **common)
    assert stopped.state.global_step == 3 and os.path.isdir(tmp_path / "resumed" / "checkpoint-3")
    resumed = lift_train(tmp_path / "resumed", options=options, resume=True, **common)
    assert resumed.state.global_step == 6
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    a, b = sparse_optimizer_of(straight.optimizer), sparse_optimizer_of(resumed.optimizer)
    weight = straight.model.model.layers[0].self_attn.q_proj.weight
    state = a.state[weight]
    # the last refresh (after step 6) re-selected from the final weights; the mask did change over the run
    assert torch.equal(state["indices"], select(weight.detach(), rank=4, budget_rank=2).view(-1).nonzero().view(-1))
    assert state["origin_indices"].numel() > state["indices"].numel()
    assert torch.equal(state["exp_avg"], b.state[resumed.model.model.layers[0].self_attn.q_proj.weight]["exp_avg"])
    first, second = (load_delta(str(tmp_path / d / "sparse_delta.safetensors")) for d in ("straight", "resumed"))
    assert all(torch.equal(first.tensors[n].values, second.tensors[n].values) for n in LINEAR)


def test_step_in_backward_trains_like_the_default_without_persistent_gradients(tmp_path):
    common = dict(max_steps=4, max_grad_norm=0.0, gradient_accumulation_steps=1)
    default = lift_train(tmp_path / "default", options={"lift_interval": 2}, **common)
    lean = lift_train(tmp_path / "lean", options={"lift_interval": 2, "lift_step_in_backward": True}, **common)
    for (name, a), b in zip(default.model.named_parameters(), lean.model.parameters()):
        assert torch.equal(a, b), name
    optimizer = sparse_optimizer_of(lean.optimizer)
    assert optimizer.step_in_backward and optimizer.steps == 4 and not optimizer._grad_buffers
    first, second = (load_delta(str(tmp_path / d / "sparse_delta.safetensors")) for d in ("default", "lean"))
    assert all(torch.equal(first.tensors[n].values, second.tensors[n].values) for n in LINEAR)


@pytest.mark.parametrize("args,message", [
    ({"max_grad_norm": 1.0}, "--max_grad_norm 0"),
    ({"max_grad_norm": 0.0, "gradient_accumulation_steps": 2}, "--gradient_accumulation_steps 1"),
])
def test_step_in_backward_refuses_clipping_and_accumulation(tmp_path, args, message):
    with pytest.raises(FtpluginsError, match=message):
        lift_train(tmp_path, options={"lift_step_in_backward": True}, **args)


def test_bf16_model_trains_through_fp32_master_copies(tmp_path):
    model = tiny_llama().to(torch.bfloat16)
    trainer = lift_train(tmp_path, model=model, options={"lift_interval": 0}, max_steps=2, learning_rate=1e-2)
    optimizer = sparse_optimizer_of(trainer.optimizer)
    changed = 0
    for name, param in trainer.model.named_parameters():
        assert param.dtype == torch.bfloat16
        if name not in LINEAR:
            assert torch.equal(param, trainer.initial[name])
            continue
        state = optimizer.state[param]
        assert state["master"].dtype == torch.float32 and state["master"].numel() == state["indices"].numel()
        assert torch.equal(param.detach().view(-1)[state["indices"]], state["master"].to(torch.bfloat16))
        moved = (param.detach() != trainer.initial[name]).view(-1).nonzero().view(-1)
        assert torch.isin(moved, state["indices"]).all()
        changed += moved.numel()
    assert changed > 0
    assert optimizer.state_nbytes() == optimizer.selected_numel() * (4 + 4 + 4 + 4 + 2)  # + master, bf16 origin


# --- two processes ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_model_dir, data_dir, tmp_path):
    from test_distributed import single_vs_two_processes

    base, a, b = single_vs_two_processes(tmp_path, tiny_model_dir, f"{data_dir}/arithmetic", plugins=["lift"],
                                         learning_rate=5e-2, lift_rank=4, lift_budget_rank=2, lift_interval=2)
    assert sum(int((a[k] != base[k]).sum()) for k in a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    da = load_delta(str(tmp_path / "one" / "sparse_delta.safetensors"))
    db = load_delta(str(tmp_path / "two" / "sparse_delta.safetensors"))
    for name in da.tensors:
        assert torch.equal(da.tensors[name].indices, db.tensors[name].indices), name  # the same entries trained
