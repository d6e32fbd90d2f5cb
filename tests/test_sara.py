"""SaRA: the threshold rule, the plugin on the sparse engine, progressive stage, nuclear-norm term, delta."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cpu_args
from transformers import TrainerCallback

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.sara import plugin, select
from ftplugins.methods.sara.training import build_optimizer, nuclear_norm_grad, progressive_step
from ftplugins.sparse.delta import apply_delta, load_delta
from ftplugins.sparse.trainer import sparse_optimizer_of
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer

TAU = 2e-3
LINEAR = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in
          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")]


# --- the rule and the regulariser's gradient ----------------------------------------------------------


def test_select_is_the_threshold_mask_of_any_shape():
    weight = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(0)) * 3e-3
    mask = select(weight, TAU)
    expected = np.abs(weight.numpy()) < TAU
    assert mask.dtype == torch.bool and np.array_equal(mask.numpy(), expected)
    assert 0 < int(mask.sum()) < weight.numel()
    assert int(select(weight, 1e-9).sum()) == 0


def test_nuclear_norm_gradient_equals_autograd():
    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(7, 5, generator=g, dtype=torch.float64).requires_grad_()
    torch.linalg.matrix_norm(matrix, ord="nuc").backward()
    assert torch.allclose(nuclear_norm_grad(matrix).double(), matrix.grad, atol=1e-5)
    low = (torch.randn(7, 2, generator=g) @ torch.randn(2, 5, generator=g)).double().requires_grad_()
    grad = nuclear_norm_grad(low).double()  # rank 2: a subgradient (autograd's is arbitrary there)
    assert torch.allclose((grad * low).sum(), torch.linalg.matrix_norm(low.detach(), ord="nuc"), rtol=1e-5)
    assert float(torch.linalg.matrix_norm(grad, ord=2)) <= 1 + 1e-5
    assert int(torch.linalg.matrix_rank(grad, rtol=1e-4)) == 2
    assert torch.equal(nuclear_norm_grad(torch.zeros(4, 3)), torch.zeros(4, 3))


def test_the_term_adds_lambda_times_the_masked_nuclear_gradient_of_the_update():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 8, bias=False)
    with torch.no_grad():
        layer.weight.mul_(4e-3)
    base = layer.weight.detach().clone()
    mask = select(base, TAU)
    args = SimpleNamespace(learning_rate=1e-2, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                           weight_decay=0.0, max_grad_norm=0.0, seed=3)
    options = SimpleNamespace(sara_threshold=TAU, sara_rank_lambda=0.5, sara_rank_min_dim=0)
    optimizer = build_optimizer(layer, args, options, ["weight"])
    with torch.no_grad():  # move the trained entries as training would
        layer.weight.add_(torch.randn(8, 6) * 1e-3 * mask)
    update = ((layer.weight.detach() - base) * mask).double().requires_grad_()
    torch.linalg.matrix_norm(update, ord="nuc").backward()
    expected = 0.5 * update.grad[mask].float()
    optimizer.grad_terms[0](optimizer)
    got = optimizer._grads[layer.weight]
    assert torch.allclose(got, expected, atol=1e-5)
    assert optimizer.grad_terms[0].last == "weight"
    # min(dim) 6 is not above 6: nothing eligible, nothing added
    optimizer._grads.clear()
    optimizer.grad_terms[0].min_dim = 6
    optimizer.grad_terms[0](optimizer)
    assert not optimizer._grads


# --- options and models --------------------------------------------------------------------------------


def test_plugin_module_does_not_import_torch():
    code = ("import sys, ftplugins.methods.sara as m, ftplugins.methods.sara.options; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sara"


@pytest.mark.parametrize("options", [
    {"sara_threshold": 0.0}, {"sara_progressive_step": -2}, {"sara_rank_lambda": -1.0},
    {"sara_rank_min_dim": -1}, {"sara_treshold": 1e-3},
])
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["sara"], **options)


def test_options_parse_and_progressive_default():
    from transformers import HfArgumentParser

    from ftplugins.methods.sara.options import SaraOptions

    (opts,) = HfArgumentParser(SaraOptions).parse_args_into_dataclasses(
        ["--sara_threshold", "0.001", "--sara_progressive_step", "-1", "--sara_rank_lambda", "0"])
    assert opts == SaraOptions(sara_threshold=1e-3, sara_progressive_step=-1, sara_rank_lambda=0.0)
    assert progressive_step(SaraOptions(), 5000) == 2500
    assert progressive_step(SaraOptions(sara_progressive_step=7), 5000) == 7
    assert progressive_step(SaraOptions(sara_progressive_step=-1), 5000) == 0


def test_targets_and_unsupported_models():
    model = tiny_llama()
    run = SimpleNamespace(state={})
    plugin.prepare_model(run=run, model=model)
    assert run.state["sara"]["targets"] == LINEAR
    assert [n for n, p in model.named_parameters() if p.requires_grad] == LINEAR
    with pytest.raises(UnsupportedModelError, match="Linear"):
        plugin.prepare_model(run=SimpleNamespace(state={}),
                             model=torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)))
    with pytest.raises(FtpluginsError, match="bf16=True"):
        plugin.validate(run=SimpleNamespace(args=SimpleNamespace(fp16=True)))


def test_unet_weights_train_on_the_engine():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.05)
    run = SimpleNamespace(state={})
    plugin.prepare_model(run=run, model=unet)
    targets = run.state["sara"]["targets"]
    assert any(unet.get_parameter(n).dim() == 4 for n in targets)  # convolutions train too
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    args = SimpleNamespace(learning_rate=1e-2, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                           weight_decay=0.0, max_grad_norm=1.0, seed=0)
    options = SimpleNamespace(sara_threshold=TAU, sara_rank_lambda=5e-4, sara_rank_min_dim=8)
    optimizer = build_optimizer(unet, args, options, targets)
    assert optimizer.selected_numel() == sum(int(select(before[n], TAU).sum()) for n in targets)
    out = unet(torch.randn(1, 4, 8, 8), 3, encoder_hidden_states=torch.randn(1, 3, 8)).sample
    out.pow(2).mean().backward()
    optimizer.step()
    moved = 0
    for name, param in unet.named_parameters():
        changed = param.detach() != before[name]
        if name in targets:
            assert not (changed & ~select(before[name], TAU)).any(), name
            moved += int(changed.sum())
        else:
            assert not changed.any(), name
    assert moved > 0


# --- training through compose --------------------------------------------------------------------------


class Capture(TrainerCallback):
    """Weights after the update of optimizer step ``at`` (user callbacks run before the plugin's)."""

    def __init__(self, at):
        self.at, self.weights = at, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def sara_train(output_dir, options=None, callbacks=None, **arg_overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["sara"], **(options or {}))
    values = dict(max_steps=4, learning_rate=2e-2, weight_decay=0.0, per_device_train_batch_size=4,
                  max_grad_norm=1.0)
    values.update(arg_overrides)
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, output_dir, **values),
                  train_dataset=arithmetic_dataset(32), processing_class=tiny_tokenizer(), callbacks=callbacks)
    trainer.initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer


def test_training_changes_only_small_entries_and_the_delta_reproduces_outputs(tmp_path):
    trainer = sara_train(tmp_path, {"sara_progressive_step": -1, "sara_rank_lambda": 0.0}, weight_decay=0.1)
    optimizer = sparse_optimizer_of(trainer.optimizer)
    total = 0
    for name, param in trainer.model.named_parameters():
        before = trainer.initial[name]
        if name not in LINEAR:
            assert torch.equal(param, before), name
            continue
        mask = select(before, TAU)
        assert torch.equal(optimizer.state[param]["indices"], mask.view(-1).nonzero().view(-1))
        assert torch.equal(param.detach() != before, mask), name  # weight decay moves every selected entry
        total += int(mask.sum())
    assert total > 0 and optimizer.selected_numel() == total
    delta = load_delta(str(tmp_path / "sparse_delta.safetensors"))
    assert delta.metadata["method"] == "sara" and delta.nnz == total
    base = tiny_llama()
    apply_delta(base, delta)
    ids = torch.tensor([[1, 5, 9, 30, 44, 7]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(base(ids).logits, trainer.model(ids).logits)


def test_first_forward_equals_the_base_model(tmp_path):
    """The weights are not rewritten at init (the reference writes |v|, losing signs)."""
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["sara"])
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(8),
                  processing_class=tiny_tokenizer())
    trainer.create_optimizer()
    assert sparse_optimizer_of(trainer.optimizer).selected_numel() > 0
    ids = torch.tensor([[1, 5, 9, 30, 44, 7]])
    with torch.no_grad():
        assert torch.equal(trainer.model(ids).logits, tiny_llama()(ids).logits)


def test_progressive_stage_shrinks_the_mask_and_restarts_adam(tmp_path):
    capture = Capture(2)
    trainer = sara_train(tmp_path, {"sara_rank_lambda": 0.0}, callbacks=[capture])  # T_p = 4 // 2
    optimizer = sparse_optimizer_of(trainer.optimizer)
    assert optimizer.steps == 4
    shrunk = 0
    for name in LINEAR:
        param = trainer.model.get_parameter(name)
        state = optimizer.state[param]
        first = select(trainer.initial[name], TAU)
        expected = first & (capture.weights[name].abs() < TAU)  # M' = M ∧ {|θ_T_p| < τ}
        assert torch.equal(state["indices"], expected.view(-1).nonzero().view(-1)), name
        shrunk += int(first.sum() - expected.sum())
        assert state["step"] == 2  # Adam restarted after step 2 (bias correction from 1 again)
        left = first & ~expected  # frozen since T_p at their learned value
        assert torch.equal(param.detach()[left], capture.weights[name][left])
        assert torch.equal(param.detach()[~first], trainer.initial[name][~first])
    assert shrunk > 0


def test_the_regulariser_changes_the_update(tmp_path):
    opts = {"sara_progressive_step": -1, "sara_rank_min_dim": 16}
    plain = sara_train(tmp_path / "a", {**opts, "sara_rank_lambda": 0.0}, max_steps=3)
    ranked = sara_train(tmp_path / "b", {**opts, "sara_rank_lambda": 0.5}, max_steps=3)
    differs = [n for n in LINEAR if not torch.equal(plain.model.get_parameter(n), ranked.model.get_parameter(n))]
    assert differs
    for name, param in ranked.model.named_parameters():  # still only the selected entries moved
        before = ranked.initial[name]
        mask = select(before, TAU) if name in LINEAR else torch.zeros_like(before, dtype=torch.bool)
        assert not ((param.detach() != before) & ~mask).any(), name


def test_resume_matches_uninterrupted_across_the_progressive_step(tmp_path):
    """Checkpoint at step 2, progressive stage after step 3, regulariser on: the resumed run ends bitwise
    where the uninterrupted one does (the mask lives in the optimizer state, the draws follow its step)."""
    opts = {"sara_progressive_step": 3, "sara_rank_min_dim": 16, "sara_rank_lambda": 0.1}
    common = dict(max_steps=5, save_strategy="steps", save_steps=2)
    straight = sara_train(tmp_path / "a", opts, **common)
    sara_train(tmp_path / "b", opts, callbacks=[StopAt(2)], **common)
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["sara"], **opts)
    resumed = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path / "b", max_steps=5, learning_rate=2e-2,
                                                     per_device_train_batch_size=4, max_grad_norm=1.0,
                                                     save_strategy="steps", save_steps=2),
                  train_dataset=arithmetic_dataset(32), processing_class=tiny_tokenizer())
    resumed.train(resume_from_checkpoint=True)
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    a, b = sparse_optimizer_of(straight.optimizer), sparse_optimizer_of(resumed.optimizer)
    for name in LINEAR:
        sa, sb = a.state[straight.model.get_parameter(name)], b.state[resumed.model.get_parameter(name)]
        assert torch.equal(sa["indices"], sb["indices"]) and sa["step"] == sb["step"] == 2


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_model_dir, data_dir, tmp_path):
    from test_distributed import single_vs_two_processes

    base, a, b = single_vs_two_processes(tmp_path, tiny_model_dir, f"{data_dir}/arithmetic", plugins=["sara"],
                                         learning_rate=5e-2, sara_threshold=0.01, sara_rank_lambda=5e-4,
                                         sara_rank_min_dim=16)  # progressive re-selection at step 2 of 3
    assert sum(int((a[k] != base[k]).sum()) for k in a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    da = load_delta(str(tmp_path / "one" / "sparse_delta.safetensors"))
    db = load_delta(str(tmp_path / "two" / "sparse_delta.safetensors"))
    assert da.tensors.keys() == db.tensors.keys()
    for name in da.tensors:
        assert torch.equal(da.tensors[name].indices, db.tensors[name].indices), name  # the same entries trained
