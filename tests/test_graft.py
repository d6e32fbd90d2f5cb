"""Grafting: exact interpolation, binary rounded masks, θ_pre restored, base patch size, skill recovery
on a task where a few weights matter, the engine delta round trip, and the post_train step through compose."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import cpu_args
from transformers import TrainerCallback

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.graft import plugin
from ftplugins.methods.graft.grafting import default_region, graft, interpolate
from ftplugins.sparse.delta import apply_delta, load_delta, save_delta
from ftplugins.sparse.selection import global_topk_indices
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer


# --- a tiny task where only a few weights matter ----------------------------------------------------------


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1 = torch.nn.Linear(20, 40, bias=False)
        self.w2 = torch.nn.Linear(40, 1)

    def forward(self, x):
        return self.w2(torch.tanh(self.w1(x)))


def sparse_task():
    """θ_ft = θ_pre + δ: 4 entries that matter (δ = 1), 4 larger ones on an input that is always 0
    (δ = 3, no effect on the loss) and 1e-3 noise everywhere on w1; targets are θ_ft's outputs."""
    pre = TwoLayer()
    ft = TwoLayer()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ft.w1.weight.add_(1e-3 * torch.randn(ft.w1.weight.shape, generator=g))
        for row, col in ((0, 1), (5, 2), (9, 3), (17, 4)):
            ft.w1.weight[row, col] += 1.0
        for row in (2, 3, 4, 6):
            ft.w1.weight[row, 0] += 3.0  # input 0 is always zero: these do not matter
    x = torch.randn(64, 20, generator=g)
    x[:, 0] = 0.0
    with torch.no_grad():
        y = ft(x)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]

    def loss_fn(model, batch):
        inputs, target = batch
        return torch.nn.functional.mse_loss(model(inputs), target)

    return pre, ft, batches, loss_fn


def mean_loss(model, loss_fn, batches):
    with torch.no_grad():
        return sum(float(loss_fn(model, b)) for b in batches) / len(batches)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- options and the plugin module ---------------------------------------------------------------------


def test_plugin_module_does_not_import_torch_and_options_parse():
    code = ("import sys, ftplugins.methods.graft as m, ftplugins.methods.graft.options; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    from transformers import HfArgumentParser

    from ftplugins.methods.graft.options import GraftOptions

    (opts,) = HfArgumentParser(GraftOptions).parse_args_into_dataclasses(
        ["--graft_density", "0.01", "--graft_epochs", "3", "--graft_lr", "1e6"])
    assert opts == GraftOptions(graft_density=0.01, graft_epochs=3, graft_lr=1e6)
    assert GraftOptions().graft_sigmoid_bias == 10.0 and GraftOptions().graft_lr == 1e7
    assert plugin.name == "graft" and "2302.06600" in plugin.paper


@pytest.mark.parametrize("options", [{"graft_density": 0.0}, {"graft_density": 1.5}, {"graft_lr": -1.0},
                                     {"graft_epochs": -1}, {"graft_max_batches": 0}])
def test_bad_options_raise_option_error(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match="graft_"):
        ftplugins.compose(SFTTrainer, [plugin], **options)


def test_unsupported_model_is_refused():
    class EmbeddingOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(5, 3)

        def get_input_embeddings(self):
            return self.embed

    with pytest.raises(UnsupportedModelError, match="EmbeddingOnly"):
        default_region(EmbeddingOnly())


def test_default_region_excludes_embeddings_and_head():
    region = default_region(tiny_llama())
    assert "lm_head.weight" not in region and "model.embed_tokens.weight" not in region
    assert all(name.endswith("proj.weight") for name in region) and len(region) == 14


# --- invariants ------------------------------------------------------------------------------------------


def test_gamma_zero_is_theta_pre_and_gamma_one_is_theta_ft_exactly():
    pre, ft = tiny_llama(seed=0), tiny_llama(seed=1)
    for name in default_region(pre):
        a, b = dict(pre.named_parameters())[name].detach(), dict(ft.named_parameters())[name].detach()
        delta = b.float() - a.float()
        assert torch.equal(interpolate(a, b, delta, torch.zeros_like(delta)), a)
        assert torch.equal(interpolate(a, b, delta, torch.ones_like(delta)), b)
        half = interpolate(a, b, delta, torch.full_like(delta, 0.5))
        assert torch.allclose(half, (a + b) / 2, atol=1e-6)


def test_evaluations_see_binary_grafts_and_the_model_ends_at_theta_pre():
    pre, ft, batches, loss_fn = sparse_task()
    before, fine = weights(pre), weights(ft)
    region = ["w1.weight", "w2.weight"]
    seen = []

    def eval_fn(model):
        current = weights(model)
        for n in region:  # each entry is exactly θ_pre or exactly θ_ft: the rounded γ is binary
            assert bool(((current[n] == before[n]) | (current[n] == fine[n])).all()), n
        assert torch.equal(current["w2.bias"], before["w2.bias"])  # outside R: never touched
        seen.append(current)
        return -mean_loss(model, loss_fn, batches)

    result = graft(pre, ft, loss_fn, batches, region=region, density=0.005, epochs=3, eval_fn=eval_fn)
    assert len(seen) == 4 and [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert all(torch.equal(p, before[n]) for n, p in weights(pre).items())  # θ_pre restored bit for bit
    assert all(m.dtype == torch.bool for m in result.masks.values())


def test_model_is_reset_to_theta_pre_when_an_evaluation_fails():
    pre, ft, batches, loss_fn = sparse_task()
    before = weights(pre)
    calls = []

    def eval_fn(model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        graft(pre, ft, loss_fn, batches, region=["w1.weight"], density=0.01, epochs=3, eval_fn=eval_fn)
    assert all(torch.equal(p, before[n]) for n, p in weights(pre).items())
    assert all(p.grad is None for p in pre.parameters())


def test_base_patch_is_the_global_top_k_of_delta_and_within_density():
    pre, ft = tiny_llama(seed=0), tiny_llama(seed=1)
    tok = torch.randint(5, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    batches = [tok]

    def loss_fn(model, batch):
        return model(input_ids=batch, labels=batch).loss

    region = default_region(pre)
    n = sum(dict(pre.named_parameters())[r].numel() for r in region)
    density = 1e-3
    result = graft(pre, ft, loss_fn, batches, density=density, epochs=0)
    assert result.region_numel == n and result.base_patch_nnz == int(density * n) > 0
    assert result.history[0]["nnz"] == result.nnz == result.base_patch_nnz <= density * n
    pp, fp = dict(pre.named_parameters()), dict(ft.named_parameters())
    expected = global_topk_indices({r: (fp[r] - pp[r]).detach().abs() for r in region}, result.base_patch_nnz)
    for r in region:
        assert torch.equal(result.masks[r].view(-1).nonzero().squeeze(1), expected[r]), r


def test_grafting_a_tiny_region_recovers_the_fine_tuned_loss():
    pre, ft, batches, loss_fn = sparse_task()
    region = ["w1.weight", "w2.weight"]
    n = 20 * 40 + 40
    loss_pre, loss_ft = mean_loss(pre, loss_fn, batches), mean_loss(ft, loss_fn, batches)
    # ρ = 0.5%: the base patch (top 4 by |δ|) is the 4 distractors; the optimisation must find the 4 that matter
    result = graft(pre, ft, loss_fn, batches, region=region, density=0.005, epochs=10, keep_graft=True)
    assert result.base_patch_nnz == 4 and result.history[0]["score"] < -0.5 * loss_pre  # base patch is useless
    loss_graft = mean_loss(pre, loss_fn, batches)
    assert result.nnz <= 0.01 * n  # a ≤ 1% region
    assert (loss_pre - loss_graft) >= 0.9 * (loss_pre - loss_ft), (loss_pre, loss_graft, loss_ft, result.history)
    for row, col in ((0, 1), (5, 2), (9, 3), (17, 4)):
        assert bool(result.masks["w1.weight"][row, col])


def test_hold_density_keeps_every_mask_within_the_budget_where_the_paper_lets_it_grow():
    region = ["w1.weight", "w2.weight"]
    n, density = 20 * 40 + 40, 0.005  # k = 4
    runs = {}
    for hold in (False, True):
        pre, ft, batches, loss_fn = sparse_task()
        runs[hold] = graft(pre, ft, loss_fn, batches, region=region, density=density, epochs=10, hold_density=hold)
    k = runs[True].base_patch_nnz
    assert k == int(density * n) == 4
    assert max(h["nnz"] for h in runs[False].history) > k  # the paper's relaxation switches on more than rho N
    assert max(h["nnz"] for h in runs[True].history) <= k and runs[True].nnz <= k
    assert runs[True].delta.metadata["graft_hold_density"] == "True"
    # with room for the 4 that matter (rho N = 8), the held budget still finds them
    pre, ft, batches, loss_fn = sparse_task()
    held = graft(pre, ft, loss_fn, batches, region=region, density=0.01, epochs=10, hold_density=True)
    assert held.nnz <= 8 and all(bool(held.masks["w1.weight"][r, c]) for r, c in ((0, 1), (5, 2), (9, 3), (17, 4)))


def test_history_counts_entries_flipped_from_the_base_patch_and_says_when_the_mask_never_moved():
    region = ["w1.weight", "w2.weight"]
    pre, ft, batches, loss_fn = sparse_task()
    moved = graft(pre, ft, loss_fn, batches, region=region, density=0.005, epochs=10)
    assert moved.history[0]["changed"] == 0  # epoch 0 is the base patch itself
    assert moved.mask_moved and max(h["changed"] for h in moved.history) > 0
    # the 4 that matter are in the final mask and not in the base patch (the 4 distractors): at least 4 flipped
    assert moved.history[moved.best_epoch]["changed"] >= 4
    pre, ft, batches, loss_fn = sparse_task()
    stuck = graft(pre, ft, loss_fn, batches, region=region, density=0.005, epochs=10, lr=1e-3)
    assert not stuck.mask_moved and all(h["changed"] == 0 for h in stuck.history)
    assert stuck.nnz == stuck.base_patch_nnz == 4


def test_graft_is_deterministic_given_the_seed():
    runs = []
    for _ in range(2):
        pre, ft, batches, loss_fn = sparse_task()
        runs.append(graft(pre, ft, loss_fn, batches, region=["w1.weight"], density=0.005, epochs=3, seed=7))
    assert runs[0].history == runs[1].history
    assert torch.equal(runs[0].masks["w1.weight"], runs[1].masks["w1.weight"])


def test_delta_round_trips_through_the_engine(tmp_path):
    pre, ft, batches, loss_fn = sparse_task()
    base = weights(pre)
    result = graft(pre, ft, loss_fn, batches, region=["w1.weight", "w2.weight"], density=0.005, epochs=5,
                   keep_graft=True)
    grafted = weights(pre)
    fine = weights(ft)
    for n in ("w1.weight", "w2.weight"):  # the graft: θ_ft on the mask, θ_pre elsewhere
        assert torch.equal(grafted[n], torch.where(result.masks[n], fine[n], base[n]))
    assert result.delta.nnz <= result.nnz and result.delta.metadata["method"] == "graft"
    path = save_delta(result.delta, str(tmp_path / "graft_delta.safetensors"))
    target = TwoLayer()
    assert all(torch.equal(p, base[n]) for n, p in weights(target).items())
    apply_delta(target, load_delta(path))
    assert all(torch.equal(p, grafted[n]) for n, p in weights(target).items())


# --- through compose: the post_train step ----------------------------------------------------------------


class AtTrainEnd(TrainerCallback):
    """The weights the Trainer's loop ended with (before post_train)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights = weights(model)


def graft_train(output_dir, **options):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin], **{"graft_density": 0.01, "graft_epochs": 2,
                                                      "graft_max_batches": 2, **options})
    model = tiny_llama()
    initial = weights(model)
    end = AtTrainEnd()
    trainer = cls(model=model, args=cpu_args(SFTConfig, output_dir, max_steps=2, learning_rate=1e-2,
                                             per_device_train_batch_size=4),
                  train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer(), callbacks=[end])
    trainer.train()
    return trainer, initial, end.weights


def test_post_train_writes_the_graft_delta(tmp_path):
    trainer, initial, trained = graft_train(tmp_path)
    # the trainer keeps (and would save) the weights it trained, bit for bit
    assert all(torch.equal(p, trained[n]) for n, p in weights(trainer.model).items())
    state = trainer.ftplugins_run.state["graft"]
    result = state["result"]
    assert all(torch.equal(state["pretrained"][n], initial[n]) for n in state["region"])  # θ_pre snapshot
    assert any(not torch.equal(trained[n], initial[n]) for n in state["region"])  # it did fine-tune
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    delta = load_delta(str(tmp_path / "graft_delta.safetensors"))
    assert set(delta.tensors) == set(state["region"]) and 0 < delta.nnz <= result.nnz
    # applied to θ_pre, the delta gives θ_ft on the mask and θ_pre elsewhere, bit for bit
    rebuilt = {n: initial[n].clone() for n in state["region"]}
    apply_delta(rebuilt, delta)
    for n in state["region"]:
        assert torch.equal(rebuilt[n], torch.where(result.masks[n], trained[n], initial[n])), n


def test_post_train_warns_when_the_mask_never_moved(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="ftplugins"):
        trainer, _, _ = graft_train(tmp_path, graft_lr=1e-12)
    assert not trainer.ftplugins_run.state["graft"]["result"].mask_moved
    assert any("never changed from the base patch" in r.getMessage() and "--graft_lr" in r.getMessage()
               for r in caplog.records)


def test_post_train_grafts_a_model_from_graft_finetuned_path(tmp_path):
    finetuned = tiny_llama(seed=3)
    finetuned.save_pretrained(str(tmp_path / "ft"))
    trainer, initial, trained = graft_train(tmp_path / "out", graft_finetuned_path=str(tmp_path / "ft"))
    state = trainer.ftplugins_run.state["graft"]
    result = state["result"]
    other = weights(finetuned)
    rebuilt = {n: initial[n].clone() for n in state["region"]}
    apply_delta(rebuilt, load_delta(str(tmp_path / "out" / "graft_delta.safetensors")))
    for n in state["region"]:  # θ_ft is the folder's model, not the one this run trained
        assert torch.equal(rebuilt[n], torch.where(result.masks[n], other[n], initial[n])), n
    with pytest.raises(FtpluginsError, match="graft_finetuned_path"):
        graft_train(tmp_path / "bad", graft_finetuned_path=str(tmp_path / "missing"))


def test_post_train_refuses_without_the_snapshot():
    from types import SimpleNamespace

    run = SimpleNamespace(state={}, options_for=lambda p: None)
    with pytest.raises(FtpluginsError, match="prepare_model"):
        plugin.post_train(run=run, trainer=None)
