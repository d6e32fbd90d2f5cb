"""On a CUDA GPU: the compiled Triton kernel against its torch reference, the sparse engine and the
adapters training end to end with them, and bitsandbytes 4-bit bases. Skipped without a GPU (CI has none);
the same kernel runs on the CPU under TRITON_INTERPRET=1 in test_kernels_sparse_adamw.py. On a GPU machine a missing
triton or bitsandbytes fails the run instead: a skip there would hide that the GPU paths never ran."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: What the GPU tests need besides torch, with the command that installs it.
GPU_EXTRAS = {"triton": "pip install ./kernels", "ftplugins_kernels": "pip install ./kernels",
              "bitsandbytes": "pip install 'ftplugins[quant]'"}

if torch.cuda.is_available():
    missing = [f"{module} ({install})" for module, install in GPU_EXTRAS.items()
               if importlib.util.find_spec(module) is None]
    if missing:  # an error at collection, before the helpers below (they would skip without triton)
        raise ImportError(f"tests/test_cuda.py on a CUDA machine needs {', '.join(missing)}; install it: these tests "
                          "fail rather than skip where a GPU is present.")

from test_kernels_sparse_adamw import CASES, HYPER, problem  # noqa: E402

import ftplugins  # noqa: E402
from ftplugins.kernels.sparse_adamw_reference import sparse_adamw_reference  # noqa: E402
from ftplugins.testing import arithmetic_dataset, save_tiny_llama, tiny_llama, tiny_tokenizer  # noqa: E402

CUDA = "cuda"


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FTPLUGINS_KERNELS", raising=False)


def on_gpu(tensors):
    return [t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors]


# --- the fused masked AdamW --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k,dtype,with_indices", CASES)
def test_sparse_adamw_kernel_matches_the_reference(n, k, dtype, with_indices):
    from ftplugins_kernels.sparse_adamw_triton import sparse_adamw_triton

    a, b = on_gpu(problem(n, k, dtype, with_indices)), on_gpu(problem(n, k, dtype, with_indices))
    before = a[0].clone()
    untouched = torch.ones(n, dtype=torch.bool, device=CUDA)
    if with_indices:
        untouched[a[4]] = False
    for step in (1, 2, 7):
        sparse_adamw_triton(*a, **HYPER, step=step, grad_scale=0.5)
        sparse_adamw_reference(*b, **HYPER, step=step, grad_scale=0.5)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a[3], b[3], rtol=1e-5, atol=1e-7)
    if dtype == torch.float32:
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(a[5], b[5], rtol=1e-5, atol=1e-6)
        selected = a[0] if a[4] is None else a[0][a[4]]
        assert torch.equal(selected, a[5].to(dtype))  # on a GPU the weight is the master rounded to nearest
    if with_indices:
        assert torch.equal(a[0][untouched], before[untouched])
    assert not torch.equal(a[0], before)


def test_the_dispatcher_sends_gpu_tensors_to_the_kernel(monkeypatch):
    import ftplugins_kernels.sparse_adamw_triton as module
    from ftplugins.kernels import sparse_adamw as dispatcher

    calls = []
    real = module.sparse_adamw_triton
    monkeypatch.setattr(module, "sparse_adamw_triton", lambda *a, **k: (calls.append(1), real(*a, **k)))
    tensors = on_gpu(problem(300, 100, torch.float32, True))
    dispatcher.sparse_adamw_(*tensors, **HYPER, step=1)
    assert calls == [1]
    monkeypatch.setenv("FTPLUGINS_KERNELS", "off")
    dispatcher.sparse_adamw_(*tensors, **HYPER, step=2)
    assert calls == [1]


def test_multi_tensor_sparse_adamw_kernel_matches_the_reference():
    from test_kernels_sparse_adamw_multi import MIXED, assert_equal_to_reference, reference_step, updates_of

    from ftplugins_kernels.sparse_adamw_multi_triton import sparse_adamw_multi_triton

    got, want = updates_of(MIXED), updates_of(MIXED)
    for updates in (got, want):
        for u in updates:
            for name in ("param", "grad", "exp_avg", "exp_avg_sq", "indices", "master"):
                if getattr(u, name) is not None:
                    setattr(u, name, getattr(u, name).to(CUDA))
    for _ in range(3):
        for u in got + want:
            u.step += 1
        sparse_adamw_multi_triton(got, grad_scale=0.5)
        reference_step(want, grad_scale=0.5)
    assert_equal_to_reference(got, want)


# --- end to end on the GPU ---------------------------------------------------------------------------------


def gpu_args(output_dir, **overrides):
    from trl import SFTConfig

    values = dict(output_dir=str(output_dir), report_to="none", max_steps=4, per_device_train_batch_size=4,
                  learning_rate=2e-2, weight_decay=0.1, logging_steps=1, save_strategy="no", seed=0,
                  disable_tqdm=True, bf16=False)
    values.update(overrides)
    return SFTConfig(**values)


def train(output_dir, plugins, options, model, monkeypatch, kernels="auto", **overrides):
    from trl import SFTTrainer

    monkeypatch.setenv("FTPLUGINS_KERNELS", kernels)
    cls = ftplugins.compose(SFTTrainer, plugins, **options)
    trainer = cls(model=model, args=gpu_args(output_dir, **overrides), train_dataset=arithmetic_dataset(64),
                  processing_class=tiny_tokenizer())
    trainer.initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer


LIFT = {"lift_rank": 4, "lift_budget_rank": 2, "lift_interval": 0}


def test_lift_on_gpu_equals_the_reference_path_and_trains_only_selected_entries(tmp_path, monkeypatch):
    from ftplugins.sparse.trainer import sparse_optimizer_of

    fused = train(tmp_path / "triton", ["lift"], LIFT, tiny_llama(), monkeypatch)
    plain = train(tmp_path / "torch", ["lift"], LIFT, tiny_llama(), monkeypatch, kernels="off")
    optimizer = sparse_optimizer_of(fused.optimizer)
    assert optimizer.steps == 4
    for (name, a), b in zip(fused.model.named_parameters(), plain.model.parameters()):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        state = optimizer.state.get(a)
        if state is None:
            assert torch.equal(a, fused.initial[name]), name
            continue
        moved = (a.detach() != fused.initial[name]).view(-1).nonzero().view(-1)
        assert torch.isin(moved, state["indices"].long()).all(), name


def test_lift_update_inside_the_backward_on_gpu_equals_the_step(tmp_path, monkeypatch):
    import ftplugins.sparse.linear_grad as linear_grad
    from ftplugins.sparse.trainer import sparse_optimizer_of

    monkeypatch.setattr(linear_grad, "PRODUCT_BLOCK", 256)  # the tiny model's weights by blocks of rows too
    common = dict(max_grad_norm=0.0)
    default = train(tmp_path / "step", ["lift"], LIFT, tiny_llama(), monkeypatch, **common)
    lean = train(tmp_path / "lean", ["lift"], {**LIFT, "lift_step_in_backward": True}, tiny_llama(), monkeypatch,
                 **common)
    assert sparse_optimizer_of(lean.optimizer).step_in_backward
    for (name, a), b in zip(default.model.named_parameters(), lean.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_lift_bf16_model_on_gpu_keeps_fp32_masters(tmp_path, monkeypatch):
    from ftplugins.sparse.trainer import sparse_optimizer_of

    trainer = train(tmp_path, ["lift"], LIFT, tiny_llama().to(torch.bfloat16), monkeypatch, max_steps=2,
                    learning_rate=1e-2)
    optimizer = sparse_optimizer_of(trainer.optimizer)
    changed = 0
    for name, param in trainer.model.named_parameters():
        state = optimizer.state.get(param)
        if state is None:
            continue
        assert state["master"].dtype == torch.float32
        assert torch.equal(param.detach().view(-1)[state["indices"].long()], state["master"].to(torch.bfloat16))
        changed += int((param.detach() != trainer.initial[name]).sum())
    assert changed > 0


def test_bottleneck_trains_on_gpu(tmp_path, monkeypatch):
    options = {"bottleneck_preset": "llm_adapters_series", "bottleneck_size": 8}
    trainer = train(tmp_path, ["bottleneck"], options, tiny_llama(), monkeypatch, learning_rate=2e-3)
    adapter = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert adapter and any(not torch.equal(p, trainer.initial[n]) for n, p in adapter.items())
    frozen = [(n, p) for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(p, trainer.initial[n]) for n, p in frozen)


@pytest.mark.parametrize("plugin,options", [
    ("block_lora", {"block_lora_r": 4, "block_lora_dropout": 0.0}),
    ("bottleneck", {"bottleneck_preset": "llm_adapters_series", "bottleneck_size": 8}),
])
def test_adapters_train_on_a_4bit_base_on_gpu(plugin, options, tmp_path, monkeypatch):
    import bitsandbytes as bnb  # present: checked at collection
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    path = save_tiny_llama(str(tmp_path / "tiny"))
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map={"": 0})
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    trainer = train(tmp_path / "run", [plugin], options, model, monkeypatch, learning_rate=1e-2, bf16=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and any(not torch.equal(p, trainer.initial[n]) for n, p in trained.items())
    quantized = [n for n, p in trainer.model.named_parameters() if p.dtype == torch.uint8]
    assert quantized and all(torch.equal(dict(trainer.model.named_parameters())[n], trainer.initial[n])
                             for n in quantized)
