"""Triton kernel: the masked AdamW step of many tensors in one launch.

The launch reads small tables built on the host: per tensor a row of addresses (weight, compact gradient,
moments, indices, fp32 master), its entry count, flags (has indices, has a master) and first program; per
program its tensor; the update's scalars (decay, betas, step size, bias correction, eps) as arguments when every
tensor shares them (one parameter group, the usual case), else a row of them per tensor. Each tensor gets
``ceil(count / BLOCK)`` consecutive programs and a tensor with no selected entry gets none. Each program then
does for its block what a program of ``sparse_adamw_triton`` does. The weight's element type and the index type are
compile-time, so tensors are launched in one group per (device, weight dtype, index dtype): one launch for a
model of one dtype on one GPU. Tested against the per-tensor reference under ``TRITON_INTERPRET=1``.

The host's share runs every step for every tensor, so it is kept to one pass of attribute reads: the tables are
built, checked and copied to the device once per set of tensors and reused while the addresses repeat (a GPU step
whose kernel takes microseconds was measured at ~1.4 ms when the host rebuilt and re-checked them every step).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import triton
import triton.language as tl

BLOCK = 1024
#: Bits of a tensor's flags.
HAS_INDICES, HAS_MASTER = 1, 2


@triton.jit
def _multi_tensor_kernel(tensor_table, block_table, scalar_table, grad_scale, param_like, index_like,
                         decay, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_sqrt_bias_correction2, eps,
                         UNIFORM: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    # tensor_table rows (int64): weight, gradient, exp_avg, exp_avg_sq, indices, master addresses; count; flags;
    # first program. UNIFORM: every tensor's update has the scalars passed as arguments (one parameter group:
    # no table to copy each step); otherwise scalar_table rows (fp32, see _scalars) hold each tensor's.
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
    if not UNIFORM:
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
    devices = {t.device for t in update.tensors()}
    if len(devices) > 1:
        raise ValueError(f"sparse_adamw_multi_triton: tensor {position}'s weight and state are on "
                         f"{sorted(map(str, devices))}; keep each tensor's state on its weight's device")
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
#: training loop, which steps the same tensors every time, builds, checks and copies them once rather than every
#: step. A key equal to an earlier one means equal tables, so an address reused by another tensor cannot make a
#: stale entry wrong.
_TABLES: OrderedDict = OrderedDict()
_TABLES_KEPT = 8
_F32 = torch.float32


def _rows(group: list) -> tuple | None:
    """Per tensor: addresses, entry count, flags, first program: the key of the group's tables.

    The step's hot path (it runs every optimizer step, for every tensor): one pass of plain attribute reads. The
    gradient, the one tensor that is new each step, is checked here (``None`` when it fails: the full check then
    names the problem); the rest is checked when the key is new."""
    rows = []
    first = 0
    for u in group:
        grad, indices, master = u.grad, u.indices, u.master
        if grad.dtype is not _F32 or not grad.is_contiguous():
            return None
        k = grad.numel()
        g = grad.data_ptr()  # also the placeholder of an absent index list or master: never read (flags)
        rows.append((u.param.data_ptr(), g, u.exp_avg.data_ptr(), u.exp_avg_sq.data_ptr(),
                     g if indices is None else indices.data_ptr(), g if master is None else master.data_ptr(), k,
                     (0 if indices is None else HAS_INDICES) | (0 if master is None else HAS_MASTER), first))
        first += (k + BLOCK - 1) // BLOCK
    return tuple(rows)


def _tables(group: list, positions: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tensor table, program -> tensor table, program count) of ``group`` on ``device``, kept between steps."""
    rows = _rows(group)
    key = (device, rows)
    if rows is not None and key in _TABLES:
        _TABLES.move_to_end(key)
        return _TABLES[key]
    for u, position in zip(group, positions):
        _check(u, position)
    if rows is None:
        raise AssertionError("sparse_adamw_multi_triton: a gradient failed the step's check but not the full one")
    programs = [triton.cdiv(row[6], BLOCK) for row in rows]
    # The program -> tensor map in one vectorised call (a step at 20% of an 85M model has ~17k programs).
    block_table = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32), torch.tensor(programs))
    tables = (torch.tensor(rows, dtype=torch.int64).to(device), block_table.to(device), sum(programs))
    _TABLES[key] = tables
    while len(_TABLES) > _TABLES_KEPT:
        _TABLES.popitem(last=False)
    return tables


def _launch(group: list, positions: list, device: torch.device, grad_scale: float) -> None:
    tensor_table, block_table, programs = _tables(group, positions, device)
    if not programs:
        return
    first = group[0]
    hyper = (first.lr, first.beta1, first.beta2, first.eps, first.weight_decay, first.step)
    uniform = all((u.lr, u.beta1, u.beta2, u.eps, u.weight_decay, u.step) == hyper for u in group)
    if uniform:  # one parameter group: the scalars go as arguments, nothing is copied to the device this step
        scalars, scalar_table = _scalars(first), tensor_table
    else:  # one small copy of each tensor's scalars (bias corrections change every step)
        scalars = [0.0] * 7
        scalar_table = torch.tensor([_scalars(u) for u in group], dtype=torch.float32).to(device, non_blocking=True)
    index_like = next((u.indices for u in group if u.indices is not None), tensor_table)
    _multi_tensor_kernel[(programs,)](tensor_table, block_table, scalar_table, grad_scale, first.param, index_like,
                                      *scalars, UNIFORM=uniform, BLOCK_SIZE=BLOCK)


def sparse_adamw_multi_triton(updates: list, *, grad_scale: float = 1.0) -> None:
    """Triton version of :func:`ftplugins.kernels.sparse_adamw_multi.sparse_adamw_multi_` (``updates``: a list
    of :class:`~ftplugins.kernels.sparse_adamw_multi.SparseAdamWTensor`): one launch per device, weight dtype
    and index dtype."""
    groups: dict = {}
    for position, u in enumerate(updates):
        param, indices = u.param, u.indices
        groups.setdefault((param.device, param.dtype, None if indices is None else indices.dtype), []).append(position)
    # Dense tensors (no indices) join a group of the same device and weight dtype with indices, if any.
    for device, param_dtype, index_dtype in list(groups):
        if index_dtype is not None and (device, param_dtype, None) in groups:
            groups[(device, param_dtype, index_dtype)].extend(groups.pop((device, param_dtype, None)))
    for (device, _, _), positions in groups.items():
        _launch([updates[i] for i in positions], positions, device, grad_scale)
