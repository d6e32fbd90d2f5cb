"""The fused masked AdamW kernel: the Triton kernel (CPU interpreter) equals the torch reference, and
the reference is torch's AdamW restricted to the selected entries."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ftplugins.kernels import sparse_adamw as dispatcher
from ftplugins.kernels.sparse_adamw_reference import sparse_adamw_reference

HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


@pytest.fixture
def triton_kernel(monkeypatch):
    """The Triton kernel module loaded under TRITON_INTERPRET=1 (runs on the CPU)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import ftplugins_kernels.sparse_adamw_triton as module

    module = importlib.reload(module)  # @triton.jit reads TRITON_INTERPRET when the module is imported
    yield module.sparse_adamw_triton
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    importlib.reload(module)


def problem(n, k, dtype, with_indices, seed=0):
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(n, generator=gen).to(dtype)
    indices = torch.randperm(n, generator=gen)[:k].sort().values if with_indices else None
    if with_indices == "int32":  # what the engine stores for tensors below 2**31 entries
        indices = indices.to(torch.int32)
    k = k if with_indices else n
    grad = torch.randn(k, generator=gen)
    exp_avg = 0.1 * torch.randn(k, generator=gen)
    exp_avg_sq = 0.1 * torch.rand(k, generator=gen)
    master = None
    if dtype != torch.float32:
        selected = param if indices is None else param[indices]
        master = selected.float() + 1e-3 * torch.randn(k, generator=gen)  # not exactly representable in `dtype`
    return [param, grad, exp_avg, exp_avg_sq, indices, master]


def clone(tensors):
    return [t.clone() if t is not None else None for t in tensors]


CASES = [
    (2500, 1100, torch.float32, True),  # crosses block boundaries (BLOCK=1024), last block partial
    (700, 700, torch.float32, False),  # dense: every entry
    (2049, 3, torch.float32, True),
    (2500, 1100, torch.float32, "int32"),
    (1500, 600, torch.bfloat16, True),  # low precision: fp32 master values
    (900, 900, torch.float16, False),
]


@pytest.mark.parametrize("n,k,dtype,with_indices", CASES)
def test_triton_kernel_matches_reference(triton_kernel, n, k, dtype, with_indices):
    a, b = problem(n, k, dtype, with_indices), problem(n, k, dtype, with_indices)
    untouched = torch.zeros(n, dtype=torch.bool)
    if with_indices:
        untouched[:] = True
        untouched[a[4]] = False
    before = a[0].clone()
    for step in (1, 2, 7):
        triton_kernel(*a, **HYPER, step=step, grad_scale=0.5)
        sparse_adamw_reference(*b, **HYPER, step=step, grad_scale=0.5)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-7)  # exp_avg
    torch.testing.assert_close(a[3], b[3], rtol=1e-5, atol=1e-7)  # exp_avg_sq
    assert torch.equal(a[1], b[1])  # the gradient is read, never written
    if dtype == torch.float32:
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(a[5], b[5], rtol=1e-5, atol=1e-6)  # master
        selected = a[0] if a[4] is None else a[0][a[4]]
        rounded = a[5].to(dtype)
        if dtype == torch.float16:
            assert torch.equal(selected, rounded)  # the weight holds the rounded master
        else:  # Triton's interpreter truncates fp32 -> bf16 (GPUs round to nearest even): one step at most
            step = torch.finfo(dtype).eps * rounded.float().abs()
            assert ((selected.float() - rounded.float()).abs() <= step).all()
        torch.testing.assert_close(a[0].float(), b[0].float(), rtol=2 ** -7, atol=1e-3)  # at most one rounding step
    assert torch.equal(a[0][untouched], before[untouched])  # entries outside the index list are never written
    assert not torch.equal(a[0], before)


def test_dispatcher_uses_the_reference_on_cpu_and_the_kernel_when_interpreting(triton_kernel, monkeypatch):
    import ftplugins_kernels.sparse_adamw_triton as module

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return triton_kernel(*args, **kwargs)

    tensors = problem(300, 100, torch.float32, True)
    with monkeypatch.context() as patch:
        patch.setattr(module, "sparse_adamw_triton", spy)
        dispatcher.sparse_adamw_(*tensors, **HYPER, step=1)
        assert calls == [1]  # TRITON_INTERPRET=1 routes CPU tensors to Triton
        patch.setenv("FTPLUGINS_KERNELS", "off")
        dispatcher.sparse_adamw_(*tensors, **HYPER, step=2)
        assert calls == [1]
        patch.delenv("FTPLUGINS_KERNELS")
        patch.delenv("TRITON_INTERPRET")
        dispatcher.sparse_adamw_(*tensors, **HYPER, step=3)
        assert calls == [1]  # plain CPU tensors: the reference


def test_reference_is_torch_adamw_on_the_selected_entries():
    """Same operation order as torch.optim.AdamW (single tensor): bitwise equal on the selected entries."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 30, generator=gen)
    indices = torch.randperm(weight.numel(), generator=gen)[:200].sort().values
    dense = torch.nn.Parameter(weight.clone())
    adamw = torch.optim.AdamW([dense], lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                              weight_decay=HYPER["weight_decay"], foreach=False)
    sparse = weight.clone()
    exp_avg, exp_avg_sq = torch.zeros(200), torch.zeros(200)
    for step in range(1, 6):
        grad = torch.randn(40, 30, generator=gen)
        dense.grad = grad.clone()
        adamw.step()
        sparse_adamw_reference(sparse.view(-1), grad.view(-1)[indices].clone(), exp_avg, exp_avg_sq, indices,
                               **HYPER, step=step)
    assert torch.equal(sparse.view(-1)[indices], dense.detach().view(-1)[indices])
    rest = torch.ones(weight.numel(), dtype=torch.bool)
    rest[indices] = False
    assert torch.equal(sparse.view(-1)[rest], weight.view(-1)[rest])  # frozen, weight decay included
    assert torch.equal(exp_avg, adamw.state[dense]["exp_avg"].view(-1)[indices])


def test_grad_scale_is_clipping_without_touching_the_gradient():
    a = problem(200, 50, torch.float32, True, seed=3)
    b = clone(a)
    b[1] = b[1] * 0.25
    grad = a[1].clone()
    sparse_adamw_reference(*a, **HYPER, step=1, grad_scale=0.25)
    sparse_adamw_reference(*b, **HYPER, step=1)
    assert torch.equal(a[1], grad)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert math.isclose(float(a[3].sum()), float(b[3].sum()), rel_tol=1e-6)
