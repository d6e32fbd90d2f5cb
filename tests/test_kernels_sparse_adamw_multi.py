"""The multi-tensor masked AdamW: one Triton launch (CPU interpreter) over many tensors equals the torch
reference called per tensor, and the sparse engine's step goes through it."""

from __future__ import annotations

import importlib

import pytest
import torch

from ftplugins.kernels import sparse_adamw_multi as dispatcher
from ftplugins.kernels.sparse_adamw_multi import SparseAdamWTensor
from ftplugins.kernels.sparse_adamw_reference import sparse_adamw_reference
from test_kernels_sparse_adamw import HYPER, problem

BLOCK = 1024


@pytest.fixture
def multi_kernel(monkeypatch):
    """The multi-tensor kernel module loaded under TRITON_INTERPRET=1 (runs on the CPU)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FTPLUGINS_KERNELS", raising=False)
    import ftplugins_kernels.sparse_adamw_multi_triton as module

    module = importlib.reload(module)  # @triton.jit reads TRITON_INTERPRET when the module is imported
    yield module
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    importlib.reload(module)


# (weight entries, selected entries, weight dtype, indices: True / "int32" / False = dense, step, lr)
MIXED = [
    (2500, 1100, torch.float32, "int32", 3, 3e-2),  # 2 blocks, the second partial
    (700, 700, torch.float32, False, 3, 3e-2),  # dense slice
    (3000, 0, torch.float32, "int32", 3, 3e-2),  # nothing selected: no program
    (2049, 3, torch.float32, True, 1, 1e-2),  # int64 indices, another step count and learning rate
    (1500, 600, torch.bfloat16, "int32", 5, 3e-2),  # fp32 master values
    (900, 900, torch.float16, False, 2, 3e-2),  # dense, with a master
    (BLOCK, BLOCK, torch.float32, False, 3, 3e-2),  # exactly one block
    (1300, 500, torch.float32, "int32", 2, 1e-2),  # another parameter group: its scalars differ from the others'
]


def updates_of(cases, seed=0):
    updates = []
    for position, (n, k, dtype, with_indices, step, lr) in enumerate(cases):
        param, grad, exp_avg, exp_avg_sq, indices, master = problem(n, max(k, 1), dtype, with_indices,
                                                                    seed=seed + position)
        if k == 0:
            grad, exp_avg, exp_avg_sq = grad[:0], exp_avg[:0], exp_avg_sq[:0]
            indices = indices[:0] if indices is not None else None
            master = master[:0] if master is not None else None
        hyper = dict(HYPER, lr=lr)
        updates.append(SparseAdamWTensor(param, grad, exp_avg, exp_avg_sq, indices, master, **hyper, step=step))
    return updates


def reference_step(updates, grad_scale):
    for u in updates:
        if u.grad.numel():
            sparse_adamw_reference(u.param, u.grad, u.exp_avg, u.exp_avg_sq, u.indices, u.master, **u.hyper(),
                                   grad_scale=grad_scale)


def assert_equal_to_reference(got, want):
    for position, (a, b) in enumerate(zip(got, want)):
        msg = f"tensor {position}"
        torch.testing.assert_close(a.exp_avg, b.exp_avg, rtol=1e-5, atol=1e-7, msg=msg)
        torch.testing.assert_close(a.exp_avg_sq, b.exp_avg_sq, rtol=1e-5, atol=1e-7, msg=msg)
        if a.master is not None:
            torch.testing.assert_close(a.master, b.master, rtol=1e-5, atol=1e-6, msg=msg)
            selected = a.param if a.indices is None else a.param[a.indices.long()]
            # the weight holds the master rounded (the interpreter truncates to bf16: one step at most)
            rounded = a.master.to(a.param.dtype).float()
            assert ((selected.float() - rounded).abs() <= torch.finfo(a.param.dtype).eps * rounded.abs()).all(), msg
            torch.testing.assert_close(a.param.float(), b.param.float(), rtol=2**-7, atol=1e-3, msg=msg)
        else:
            torch.testing.assert_close(a.param, b.param, rtol=1e-5, atol=1e-6, msg=msg)


def test_one_launch_over_mixed_tensors_equals_the_reference_per_tensor(multi_kernel, monkeypatch):
    got, want = updates_of(MIXED), updates_of(MIXED)
    before = [u.param.clone() for u in got]
    launches = []
    real = multi_kernel._launch
    monkeypatch.setattr(multi_kernel, "_launch", lambda group, *a: (launches.append(len(group)), real(group, *a)))
    for _ in range(2):
        for u in got + want:
            u.step += 1
        multi_kernel.sparse_adamw_multi_triton(got, grad_scale=0.5)
        reference_step(want, grad_scale=0.5)
    assert_equal_to_reference(got, want)
    # per (weight dtype, index dtype): fp32 int32 (with the empty one and both dense), fp32 int64, bf16, fp16
    assert sorted(launches) == sorted([5, 1, 1, 1] * 2)
    for u, old in zip(got, before):
        changed = ~torch.isclose(u.param.float(), old.float(), rtol=0, atol=0)
        if u.indices is None:
            assert changed.any()
        else:
            outside = torch.ones_like(changed)
            outside[u.indices.long()] = False
            assert not changed[outside].any()  # entries outside the index list are never written
            assert changed.any() == (u.grad.numel() > 0)


def test_a_model_of_one_dtype_is_one_launch(multi_kernel, monkeypatch):
    cases = [(3000, 1500, torch.bfloat16, "int32", 1, 3e-2), (600, 600, torch.bfloat16, False, 1, 3e-2),
             (2100, 17, torch.bfloat16, "int32", 1, 3e-2), (500, 0, torch.bfloat16, "int32", 1, 3e-2)]
    got, want = updates_of(cases, seed=5), updates_of(cases, seed=5)
    blocks, uniform = [], []
    real = multi_kernel._multi_tensor_kernel

    class Spy:
        def __getitem__(self, grid):
            blocks.append(grid[0])
            return lambda *a, **k: (uniform.append(k["UNIFORM"]), real[grid](*a, **k))

    monkeypatch.setattr(multi_kernel, "_multi_tensor_kernel", Spy())
    multi_kernel.sparse_adamw_multi_triton(got)
    reference_step(want, grad_scale=1.0)
    assert blocks == [2 + 1 + 1]  # one launch; ceil(count / BLOCK) programs per tensor, none for the empty one
    assert uniform == [True]  # one parameter group: its scalars are arguments, no table is copied
    assert_equal_to_reference(got, want)
    got[1].lr, got[1].step, want[1].lr, want[1].step = 1e-2, 4, 1e-2, 4  # two groups: a row of scalars each
    multi_kernel.sparse_adamw_multi_triton(got)
    reference_step(want, grad_scale=1.0)
    assert uniform == [True, False]
    assert_equal_to_reference(got, want)


def test_a_loop_over_the_same_tensors_builds_its_tables_once(multi_kernel, monkeypatch):
    """The device tables are kept between steps (a training loop steps the same tensors); other tensors, or the
    same tensors with another selection count, get tables of their own, and every step equals the reference."""
    builds = []
    real = multi_kernel.torch.repeat_interleave
    monkeypatch.setattr(multi_kernel.torch, "repeat_interleave", lambda *a, **k: (builds.append(1), real(*a, **k))[1])
    multi_kernel._TABLES.clear()
    cases = [c for c in MIXED if c[2] == torch.float32 and c[3] != True]  # noqa: E712 (one group: fp32, int32)
    got, want = updates_of(cases), updates_of(cases)
    for _ in range(3):
        for u in got + want:
            u.step += 1
        multi_kernel.sparse_adamw_multi_triton(got)
        reference_step(want, 1.0)
    assert len(builds) == 1
    assert_equal_to_reference(got, want)
    other, other_want = updates_of(cases, seed=7), updates_of(cases, seed=7)
    multi_kernel.sparse_adamw_multi_triton(other)
    reference_step(other_want, 1.0)
    assert len(builds) == 2
    assert_equal_to_reference(other, other_want)
    assert_equal_to_reference(got, want)  # the earlier tensors were not written by the new launch
    for _ in range(2 * multi_kernel._TABLES_KEPT):  # the kept tables are bounded
        multi_kernel.sparse_adamw_multi_triton(updates_of(cases[:1], seed=11))
    assert len(multi_kernel._TABLES) <= multi_kernel._TABLES_KEPT


def test_state_of_another_dtype_is_refused_by_name(multi_kernel):
    updates = updates_of(MIXED[:2])
    updates[1].exp_avg = updates[1].exp_avg.double()
    with pytest.raises(ValueError, match=r"tensor 1's exp_avg is torch.float64, expected torch.float32"):
        multi_kernel.sparse_adamw_multi_triton(updates)
    updates = updates_of(MIXED[:2])
    updates[0].exp_avg = updates[0].exp_avg.to("meta")
    with pytest.raises(ValueError, match=r"tensor 0's weight and state are on \['cpu', 'meta'\]"):
        multi_kernel.sparse_adamw_multi_triton(updates)


def test_the_dispatcher_takes_the_kernel_when_interpreting_and_the_reference_otherwise(multi_kernel, monkeypatch):
    calls = []
    real = multi_kernel.sparse_adamw_multi_triton
    monkeypatch.setattr(multi_kernel, "sparse_adamw_multi_triton", lambda u, **k: (calls.append(len(u)), real(u, **k)))
    got, want = updates_of(MIXED), updates_of(MIXED)
    dispatcher.sparse_adamw_multi_(got)
    assert calls == [len(MIXED) - 1]  # the tensor with nothing selected is dropped first
    reference_step(want, 1.0)
    assert_equal_to_reference(got, want)
    odd = updates_of(MIXED[:1])
    for name in ("param", "grad", "exp_avg", "exp_avg_sq"):  # an fp64 weight and state
        setattr(odd[0], name, getattr(odd[0], name).double())
    dispatcher.sparse_adamw_multi_(odd)  # a dtype the kernel does not take: the reference, per tensor
    assert calls == [len(MIXED) - 1]
    monkeypatch.setenv("FTPLUGINS_KERNELS", "off")
    dispatcher.sparse_adamw_multi_(updates_of(MIXED))
    monkeypatch.delenv("FTPLUGINS_KERNELS")
    monkeypatch.delenv("TRITON_INTERPRET")
    dispatcher.sparse_adamw_multi_(updates_of(MIXED))  # plain CPU tensors: the reference
    assert calls == [len(MIXED) - 1]


def test_the_sparse_engine_steps_every_tensor_in_one_call(multi_kernel, monkeypatch):
    from ftplugins.sparse import SparseAdamW

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Linear(30, 20))
        gen = torch.Generator().manual_seed(1)

        def rule(weights):
            return {name: None if name.endswith("bias") else torch.rand(w.shape, generator=gen) < 0.3
                    for name, w in weights.items()}

        return model, SparseAdamW(list(model.named_parameters()), selection=rule, lr=1e-2, weight_decay=0.1)

    calls = []
    real = multi_kernel.sparse_adamw_multi_triton
    monkeypatch.setattr(multi_kernel, "sparse_adamw_multi_triton", lambda u, **k: (calls.append(len(u)), real(u, **k)))
    trained = []
    for kernels in ("auto", "off"):
        monkeypatch.setenv("FTPLUGINS_KERNELS", kernels)
        model, optimizer = model_and_optimizer()
        for step in range(3):
            x = torch.randn(8, 40, generator=torch.Generator().manual_seed(step))
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        trained.append([p.detach().clone() for p in model.parameters()])
    assert calls == [4, 4, 4]  # two weights and two biases, one call a step; none with FTPLUGINS_KERNELS=off
    for a, b in zip(*trained):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_kernel_report_shows_the_multi_tensor_columns_against_fused_dense_adamw():
    import copy
    import json
    import os

    from benchmarks import common
    from benchmarks.perf.kernels_report import markdown

    with open(os.path.join(common.RESULTS_DIR, "kernels-nvidia-h200", "kernels.json")) as f:
        recorded = json.load(f)
    text = markdown(recorded)  # the committed GPU run: both tables, each row's ratio from its own numbers
    assert "| multi-tensor Triton ms | vs fused dense |" in text and "Bottleneck" not in text
    assert "| multi-tensor host ms | multi-tensor GPU ms | fused dense GPU ms | GPU vs fused dense |" in text
    for row in recorded["sparse_adamw"]:
        ratio = row["multi_tensor_device_ms"] / row["dense_same_count_fused_device_ms"]
        assert f"| {common.fmt(row['multi_tensor_device_ms'])} | " in text and f"| {ratio:.1f}× |" in text
    synthetic = copy.deepcopy(recorded)
    for row in synthetic["sparse_adamw"]:
        row.update(multi_tensor_triton_ms=3 * row["dense_same_count_fused_ms"], multi_tensor_host_ms=0.2,
                   multi_tensor_device_ms=0.06, dense_same_count_fused_device_ms=0.04)
    text = markdown(synthetic)
    assert text.count("| 3.0× |") == len(synthetic["sparse_adamw"])
    assert text.count("| 1.5× |") == len(synthetic["sparse_adamw"])
    old = copy.deepcopy(recorded)  # a run from before the multi-tensor kernel, with the removed bottleneck kernel
    for row in old["sparse_adamw"]:
        for key in ("multi_tensor_triton_ms", "multi_tensor_host_ms", "multi_tensor_device_ms",
                    "dense_same_count_fused_device_ms"):
            del row[key]
    old["bottleneck"] = [dict(tokens=4096, d=768, b=64, dtype="float32", triton_ms=2.0, reference_ms=1.0)]
    text = markdown(old)
    assert "multi-tensor" not in text and "GPU vs fused dense" not in text
    assert "Bottleneck" in text and "| 0.50× |" in text


def test_the_gpu_only_timing_queues_a_sleep_ahead_of_the_start_event(monkeypatch):
    """The harness's GPU-only column: the sleep kernel must be queued before the start event (so the host's
    queueing of the timed launches hides behind it); the end-to-end column queues none."""
    from benchmarks.perf import kernels

    calls = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            calls.append("record")

        def elapsed_time(self, end):
            return 1.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: calls.append(("sleep", cycles)))
    assert kernels.cuda_time_ms(lambda: calls.append("step"), repeats=2, warmup=1, hide_host=True) == 1.0
    sleep = ("sleep", kernels.SLEEP_CYCLES)
    assert calls == ["step"] + [sleep, "record", "step", "record"] * 2
    calls.clear()
    kernels.cuda_time_ms(lambda: calls.append("step"), repeats=2, warmup=0)
    assert calls == ["record", "step", "record"] * 2
