"""Triton kernel: the masked AdamW step of many tensors in one launch.

The launch reads small tables built on the host: per tensor a row of addresses (weight, compact gradient,
moments, indices, fp32 master), its entry count, flags (has indices, has a master) and first program, and its
update's scalars (decay, betas, step size, bias correction, eps); per program its tensor, so each tensor gets
``ceil(count / BLOCK)`` consecutive programs and a tensor with no selected entry gets none. Each program then
does for its block what a program of ``sparse_adamw_triton`` does. The weight's element type and the index type are
compile-time, so tensors are launched in one group per (device, weight dtype, index dtype): one launch for a
model of one dtype on one GPU. Tested against the per-tensor reference under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict

import torch
import triton
import triton.language as tl

BLOCK = 1024
#: Bits of a tensor's flags.
HAS_INDICES, HAS_MASTER = 1, 2


@triton.jit
def _multi_tensor_kernel(tensor_table, block_table, scalar_table, grad_scale, param_like, index_like,
                         BLOCK_SIZE: tl.constexpr):
    # tensor_table rows (int64): weight, gradient, exp_avg, exp_avg_sq, indices, master addresses; count; flags;
    # first program. scalar_table rows (fp32): see _scalars.
    block = tl.program_id(0)
    tensor = tl.load(block_table + block).to(tl.int64)
    row = tensor_table + tensor * 9
    param = tl.load(row + 0).to(tl.pointer_type(param_like.dtype.element_ty), bitcast=True)
    grad = tl.load(row + 1).to(tl.pointer_type(tl.float32), bitcast=True)
    exp_avg = tl.load(row + 2).to(tl.pointer_type(tl.float32), bitcast=True)
    exp_avg_sq = tl.load(row + 3).to(tl.pointer_type(tl.float32), bitcast=True)
    indices = tl.load(row + 4).to(tl.pointer_type(index_like.dtype.element_ty), bitcast=True)
    master = tl.load(row + 5).to(tl.pointer_type(tl.float32), bitcast=True)
    n = tl.load(row + 6)
    flags = tl.load(row + 7)
    start = (block - tl.load(row + 8)) * BLOCK_SIZE
    scalars = scalar_table + tensor * 7
    decay = tl.load(scalars + 0)
    one_minus_beta1 = tl.load(scalars + 1)
    beta2 = tl.load(scalars + 2)
    one_minus_beta2 = tl.load(scalars + 3)
    step_size = tl.load(scalars + 4)
    inv_sqrt_bias_correction2 = tl.load(scalars + 5)
    eps = tl.load(scalars + 6)

    offsets = start + tl.arange(0, BLOCK_SIZE)
    valid = offsets < n
    # The flags as per-entry masks (the interpreter refuses a scalar mask combined with a vector one).
    indexed = valid & (((offsets * 0 + flags) & 1) != 0)
    mastered = valid & (((offsets * 0 + flags) & 2) != 0)
    where = tl.load(indices + offsets, mask=indexed, other=0).to(tl.int64)
    where = tl.where(indexed, where, offsets)
    w_master = tl.load(master + offsets, mask=mastered, other=0.0)
    w_param = tl.load(param + where, mask=valid & ~mastered, other=0.0).to(tl.float32)
    w = tl.where(mastered, w_master, w_param)
    g = tl.load(grad + offsets, mask=valid, other=0.0) * grad_scale
    m = tl.load(exp_avg + offsets, mask=valid, other=0.0)
    v = tl.load(exp_avg_sq + offsets, mask=valid, other=0.0)

    w = w * decay
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = tl.sqrt(v) * inv_sqrt_bias_correction2 + eps
    w = w - step_size * (m / denom)

    tl.store(exp_avg + offsets, m, mask=valid)
    tl.store(exp_avg_sq + offsets, v, mask=valid)
    tl.store(master + offsets, w, mask=mastered)
    tl.store(param + where, w.to(param_like.dtype.element_ty), mask=valid)


def _check(update, position: int) -> None:
    for name in ("param", "grad", "exp_avg", "exp_avg_sq", "indices", "master"):
        t = getattr(update, name)
        if t is not None and not t.is_contiguous():
            raise ValueError(f"sparse_adamw_multi_triton: tensor {position}'s {name} must be contiguous")
    k = update.grad.numel()
    for name in ("exp_avg", "exp_avg_sq", "indices", "master"):
        t = getattr(update, name)
        if t is not None and t.numel() != k:
            raise ValueError(f"sparse_adamw_multi_triton: tensor {position}'s {name} has {t.numel()} entries, "
                             f"its gradient {k}: pass one value per selected entry")
    for name in ("grad", "exp_avg", "exp_avg_sq", "master"):
        t = getattr(update, name)
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"sparse_adamw_multi_triton: tensor {position}'s {name} is {t.dtype}, expected "
                             "torch.float32 (moments, gradients and masters are fp32; use the reference for others)")


def _scalars(update) -> list[float]:
    return [1 - update.lr * update.weight_decay, 1 - update.beta1, update.beta2, 1 - update.beta2,
            update.lr / (1 - update.beta1**update.step), 1 / math.sqrt(1 - update.beta2**update.step), update.eps]


#: Device tables of the groups launched recently, keyed by everything they hold (addresses, counts, flags), so a
#: training loop, which steps the same tensors every time, builds and copies them once rather than every step
#: (three host-to-device copies and a repeat_interleave per step otherwise). A key equal to an earlier one means
#: equal tables, so an address reused by another tensor cannot make a stale entry wrong.
_TABLES: OrderedDict = OrderedDict()
_TABLES_KEPT = 8


def _tables(group: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tensor table, program -> tensor table, program count) of ``group`` on ``device``."""
    rows, programs = [], []
    first = 0
    for u in group:
        k = u.grad.numel()
        placeholder = u.grad.data_ptr()  # never read: masked off by the flags
        rows.append((u.param.data_ptr(), u.grad.data_ptr(), u.exp_avg.data_ptr(), u.exp_avg_sq.data_ptr(),
                     placeholder if u.indices is None else u.indices.data_ptr(),
                     placeholder if u.master is None else u.master.data_ptr(), k,
                     (HAS_INDICES if u.indices is not None else 0) | (HAS_MASTER if u.master is not None else 0),
                     first))
        programs.append(triton.cdiv(k, BLOCK))
        first += programs[-1]
    key = (device, tuple(rows))
    if key in _TABLES:
        _TABLES.move_to_end(key)
        return _TABLES[key]
    # The program -> tensor map in one vectorised call (a step at 20% of an 85M model has ~17k programs).
    block_table = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32), torch.tensor(programs))
    tables = (torch.tensor(rows, dtype=torch.int64).to(device), block_table.to(device), first)
    _TABLES[key] = tables
    while len(_TABLES) > _TABLES_KEPT:
        _TABLES.popitem(last=False)
    return tables


def _launch(group: list, device: torch.device, grad_scale: float) -> None:
    tensor_table, block_table, programs = _tables(group, device)
    if not programs:
        return
    # The step's scalars (bias corrections change every step): one small copy.
    scalar_table = torch.tensor([_scalars(u) for u in group], dtype=torch.float32).to(device, non_blocking=True)
    index_like = next((u.indices for u in group if u.indices is not None), tensor_table)
    _multi_tensor_kernel[(programs,)](tensor_table, block_table, scalar_table, grad_scale, group[0].param,
                                      index_like, BLOCK_SIZE=BLOCK)


def sparse_adamw_multi_triton(updates: list, *, grad_scale: float = 1.0) -> None:
    """Triton version of :func:`ftplugins.kernels.sparse_adamw_multi.sparse_adamw_multi_` (``updates``: a list
    of :class:`~ftplugins.kernels.sparse_adamw_multi.SparseAdamWTensor`): one launch per device, weight dtype
    and index dtype."""
    groups = defaultdict(list)
    for position, u in enumerate(updates):
        _check(u, position)
        devices = {t.device for t in u.tensors()}
        if len(devices) > 1:
            raise ValueError(f"sparse_adamw_multi_triton: tensor {position}'s weight and state are on "
                             f"{sorted(map(str, devices))}; keep each tensor's state on its weight's device")
        index_dtype = None if u.indices is None else u.indices.dtype
        groups[(u.param.device, u.param.dtype, index_dtype)].append(u)
    # Dense tensors (no indices) join a group of the same device and weight dtype with indices, if any.
    for device, param_dtype, index_dtype in list(groups):
        if index_dtype is not None and (device, param_dtype, None) in groups:
            groups[(device, param_dtype, index_dtype)].extend(groups.pop((device, param_dtype, None)))
    for (device, _, _), group in groups.items():
        _launch(group, device, grad_scale)
