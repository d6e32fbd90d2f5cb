"""LT-SFT: the global top-K rule, the two phases in one train(), the delta (apply/revert/compose), resume."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cpu_args
from transformers import TrainerCallback

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.lt_sft import plugin, select
from ftplugins.sparse.delta import apply_delta, compose_deltas, load_delta, revert_delta
from ftplugins.sparse.trainer import sparse_optimizer_of
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer

K = 400
HEAD = "lm_head.weight"


# --- the selection rule ----------------------------------------------------------------------------


def test_select_is_the_global_top_k_of_absolute_differences():
    g = torch.Generator().manual_seed(0)
    # different scales per tensor: a per-tensor quota would pick differently from one global threshold
    diffs = {"a": torch.randn(7, 9, generator=g) * 3, "b": torch.randn(40, generator=g) * 0.1,
             "c": torch.randn(3, 4, 5, generator=g)}
    for k in (1, 17, 60, 100, 163):
        masks = select(diffs, k)
        flat = np.concatenate([diffs[n].numpy().ravel() for n in diffs])
        expected = np.zeros(flat.size, dtype=bool)
        expected[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
        got = np.concatenate([masks[n].numpy().ravel() for n in diffs])
        assert masks["a"].shape == (7, 9) and masks["c"].dtype == torch.bool
        assert int(got.sum()) == k and np.array_equal(got, expected), k
    assert int(select(diffs, 10**9)["b"].sum()) == 40  # K capped at the total


def test_select_scales_to_a_million_entries():
    g = torch.Generator().manual_seed(1)
    diffs = {f"w{i}": torch.randn(250, 1000, generator=g) for i in range(4)}  # 1e6 entries
    k = 10_000
    masks = select(diffs, k)
    assert sum(int(m.sum()) for m in masks.values()) == k
    threshold = torch.cat([d.abs().view(-1) for d in diffs.values()]).topk(k).values[-1]
    assert all(bool((diffs[n].abs()[m] >= threshold).all()) for n, m in masks.items())


# --- options ---------------------------------------------------------------------------------------


def test_plugin_module_does_not_import_torch_and_options_parse():
    code = ("import sys, ftplugins.methods.lt_sft as m, ftplugins.methods.lt_sft.options; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    from transformers import HfArgumentParser

    from ftplugins.methods.lt_sft.options import LtSftOptions

    (opts,) = HfArgumentParser(LtSftOptions).parse_args_into_dataclasses(
        ["--lt_sft_k", "100", "--lt_sft_phase1_steps", "5", "--lt_sft_l1", "0.1"])
    assert opts == LtSftOptions(lt_sft_k=100, lt_sft_phase1_steps=5, lt_sft_l1=0.1)
    assert LtSftOptions().lt_sft_proportion == 0.01 and LtSftOptions().lt_sft_iterations == 1


@pytest.mark.parametrize("options", [
    {"lt_sft_k": 0}, {"lt_sft_proportion": 0.0}, {"lt_sft_proportion": 1.5}, {"lt_sft_phase1_steps": 0},
    {"lt_sft_iterations": 0}, {"lt_sft_l1": -0.1}, {"lt_sft_kk": 3},
])
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["lt_sft"], **options)


def test_unsupported_models_are_refused():
    from types import SimpleNamespace

    class HeadOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 3)

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(UnsupportedModelError, match="output head"):
        plugin.prepare_model(run=SimpleNamespace(state={}), model=HeadOnly())
    with pytest.raises(FtpluginsError, match="bf16=True"):
        plugin.validate(run=SimpleNamespace(args=SimpleNamespace(fp16=True)))


# --- training through compose ------------------------------------------------------------------------


class AtTrainBegin(TrainerCallback):
    """The weights when phase 2 (the Trainer's loop) starts, i.e. after phase 1 and the reset."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def lt_train(output_dir, model=None, options=None, stop_at=None, resume=False, seed=0, **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["lt_sft"], **{"lt_sft_k": K, **(options or {})})
    values = dict(max_steps=3, learning_rate=2e-2, weight_decay=0.1, per_device_train_batch_size=4,
                  gradient_accumulation_steps=2, max_grad_norm=1.0, seed=seed)
    values.update(overrides)
    model = model if model is not None else tiny_llama()
    begin = AtTrainBegin()
    callbacks = [begin] + ([StopAt(stop_at)] if stop_at else [])
    trainer = cls(model=model, args=cpu_args(SFTConfig, output_dir, **values), train_dataset=arithmetic_dataset(64),
                  processing_class=tiny_tokenizer(), callbacks=callbacks)
    trainer.initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.at_begin = begin.weights
    return trainer


def test_two_phases_train_only_the_ticket_from_theta0(tmp_path):
    trainer = lt_train(tmp_path)
    state = trainer.ftplugins_run.state["lt_sft"]
    assert state["phase1_steps"] == 3 and state["k"] == K  # phase 1: as many steps as phase 2
    # phase 1's weights are discarded: phase 2 starts from θ0, bit for bit
    assert all(torch.equal(trainer.at_begin[n], trainer.initial[n]) for n in trainer.initial)
    optimizer = sparse_optimizer_of(trainer.optimizer)
    assert optimizer.steps == 3 and trainer.state.global_step == 3
    nnz = 0
    for name, param in trainer.model.named_parameters():
        before = trainer.initial[name]
        if name == HEAD:
            assert "indices" not in optimizer.state[param]  # the head trains dense
            assert not torch.equal(param, before)
            continue
        indices = state["selection"][name]
        assert torch.equal(optimizer.state[param]["indices"], indices)
        mask = torch.zeros(param.numel(), dtype=torch.bool)
        mask[indices] = True
        moved = (param.detach() != before).view(-1)
        # masked-out entries stay at θ0 exactly, weight decay (0.1) included; masked-in entries moved
        assert torch.equal(moved, mask), name
        nnz += int(moved.sum())
    assert 0 < nnz <= K
    assert nnz == K  # every ticket entry moved (decay alone moves it)
    # the ticket is spread over tensors by one global threshold (not a per-tensor quota)
    counts = [state["selection"][n].numel() for n in state["selection"]]
    assert len(set(counts)) > 2

    delta = load_delta(str(tmp_path / "sparse_delta.safetensors"))
    assert delta.metadata["method"] == "lt_sft"
    assert delta.tensors[HEAD].indices is None  # the head is stored dense
    assert sum(t.nnz for n, t in delta.tensors.items() if n != HEAD) == nnz
    base = {n: t.clone() for n, t in trainer.initial.items()}
    applied = apply_delta({n: t.clone() for n, t in base.items()}, delta)
    assert all(torch.equal(applied[n], p) for n, p in trainer.model.named_parameters())
    reverted = revert_delta(applied, delta)
    assert all(torch.equal(reverted[n], base[n]) for n in base)  # apply ∘ revert = identity


def test_the_ticket_is_the_top_k_of_phase_one(tmp_path):
    """Re-run phase 1 by hand (full FT with the same steps) and check the ticket is its global top-K."""
    from trl import SFTConfig, SFTTrainer

    trainer = lt_train(tmp_path / "lt")
    ticket = trainer.ftplugins_run.state["lt_sft"]["selection"]
    torch.manual_seed(0)
    full = SFTTrainer(model=tiny_llama(), args=cpu_args(
        SFTConfig, tmp_path / "full", max_steps=3, learning_rate=2e-2, weight_decay=0.1, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_grad_norm=1.0, seed=0), train_dataset=arithmetic_dataset(64),
        processing_class=tiny_tokenizer())
    full.train()
    diffs = {n: p.detach() - trainer.initial[n] for n, p in full.model.named_parameters() if n != HEAD}
    masks = select(diffs, K)
    overlap = sum(int(masks[n].view(-1)[ticket[n]].sum()) for n in ticket)
    assert overlap >= 0.9 * K  # same data and schedule; summation order may differ in the last bits


def test_iterations_grow_the_ticket_in_k_over_n_shares_and_the_delta_is_from_theta0(tmp_path):
    from ftplugins.methods.lt_sft import training

    phases = []
    real_loop = training.run_loop
    real_select = training.global_topk_indices

    def loop(trainer, model, optimizer, steps):
        phases.append(("sparse" if isinstance(optimizer, training.SparseAdamW) else "full", steps))
        return real_loop(trainer, model, optimizer, steps)

    shares = []

    def select(diffs, k):
        chosen = real_select(diffs, k)
        shares.append(chosen)
        return chosen

    training.run_loop, training.global_topk_indices = loop, select
    try:
        trainer = lt_train(tmp_path, options={"lt_sft_iterations": 3, "lt_sft_k": 301})
    finally:
        training.run_loop, training.global_topk_indices = real_loop, real_select
    # iterations 1 and 2 run phase 1 and phase 2 before the Trainer's loop; iteration 3's phase 2 is the loop
    assert phases == [("full", 3), ("sparse", 3), ("full", 3), ("sparse", 3), ("full", 3)]
    assert [sum(c.numel() for c in chosen.values()) for chosen in shares] == [100, 100, 101]  # K/n each
    state = trainer.ftplugins_run.state["lt_sft"]
    for name, indices in state["selection"].items():
        parts = [set(chosen[name].tolist()) for chosen in shares]
        assert set(indices.tolist()) == set().union(*parts), name
        assert sum(len(p) for p in parts) == indices.numel(), name  # disjoint: only unselected entries are added
    assert sum(i.numel() for i in state["selection"].values()) == 301
    # entries never selected are bitwise θ0; the delta is θ_final - θ0 (earlier iterations' moves included)
    for name, param in trainer.model.named_parameters():
        if name == HEAD:
            continue
        moved = (param.detach() != trainer.initial[name]).view(-1).nonzero().view(-1)
        assert set(moved.tolist()) <= set(state["selection"][name].tolist()), name
    delta = load_delta(str(tmp_path / "sparse_delta.safetensors"))
    applied = apply_delta({n: t.clone() for n, t in trainer.initial.items()}, delta)
    assert all(torch.equal(applied[n], p) for n, p in trainer.model.named_parameters())


def test_l1_pulls_toward_theta0(tmp_path):
    plain = lt_train(tmp_path / "plain", max_steps=4)
    pulled = lt_train(tmp_path / "l1", options={"lt_sft_l1": 1e5}, max_steps=4)
    optimizer = sparse_optimizer_of(pulled.optimizer)
    total = sum(p.numel() for n, p in pulled.model.named_parameters() if n != HEAD)
    assert optimizer.param_groups[0]["l1"] == pytest.approx(1e5 / total) and optimizer.param_groups[1]["l1"] == 0

    def distance(trainer):
        return sum(float((p.detach() - trainer.initial[n]).abs().sum())
                   for n, p in trainer.model.named_parameters() if n != HEAD)

    assert distance(pulled) != distance(plain)


def test_language_and_task_deltas_compose_in_any_order(tmp_path):
    lang = lt_train(tmp_path / "lang", seed=0)
    base = {n: t.clone() for n, t in lang.initial.items()}
    d_lang = load_delta(str(tmp_path / "lang" / "sparse_delta.safetensors"))
    # the task SFT is trained on top of the language SFT
    model = tiny_llama()
    apply_delta(model, d_lang)
    task = lt_train(tmp_path / "task", model=model, seed=1, learning_rate=3e-2)
    d_task = load_delta(str(tmp_path / "task" / "sparse_delta.safetensors"))
    one = apply_delta({n: t.clone() for n, t in base.items()}, d_lang, d_task)
    two = apply_delta({n: t.clone() for n, t in base.items()}, d_task, d_lang)
    three = apply_delta({n: t.clone() for n, t in base.items()}, compose_deltas([d_task, d_lang]))
    for name in base:
        expected = base[name].double().view(-1).clone()
        for delta in (d_lang, d_task):
            entry = delta.tensors.get(name)
            if entry is not None:
                expected.index_add_(0, entry.flat_indices(), entry.values)
        assert torch.equal(one[name], two[name]) and torch.equal(one[name], three[name]), name
        assert torch.equal(one[name].view(-1), expected.to(base[name].dtype)), name
    assert all(torch.equal(one[n], p) for n, p in task.model.named_parameters())  # θ0 + Δ_lang + Δ_task


def test_resume_in_phase_two_matches_uninterrupted(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    straight = lt_train(tmp_path / "straight", **common)
    stopped = lt_train(tmp_path / "resumed", stop_at=2, **common)
    assert stopped.state.global_step == 2 and os.path.isdir(tmp_path / "resumed" / "checkpoint-2")
    resumed = lt_train(tmp_path / "resumed", resume=True, **common)
    assert resumed.state.global_step == 4
    assert "phase1_steps" not in resumed.ftplugins_run.state["lt_sft"]  # phase 1 is not re-run
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    first, second = (load_delta(str(tmp_path / d / "sparse_delta.safetensors")) for d in ("straight", "resumed"))
    for name, entry in first.tensors.items():
        assert torch.equal(entry.values, second.tensors[name].values), name
