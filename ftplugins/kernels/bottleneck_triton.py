"""Triton fused bottleneck adapter: ``residual + scale * (act(x @ Wd.T + bd) @ Wu.T + bu)``, forward and backward.

Same signature and semantics as :func:`~ftplugins.kernels.bottleneck_reference.bottleneck_adapter_reference`
(products accumulated in fp32, result cast to ``x.dtype``). The bottleneck width b is small (at most
:data:`MAX_BOTTLENECK`), so one program holds a whole [rows, b] slice of the hidden activation in
registers and the [rows, b] intermediate never goes to memory except once, in fp32, for the backward:

* forward, one program per tile of rows of x: loop over d_in tiles for h = x·Wd^T + bd, apply act,
  then loop over d_out tiles for out = (act(h)·Wu^T + bu)·scale + residual. h is stored for backward.
* backward, three kernels:
  - per row tile: da = (dy·scale)·Wu, dh = da·act'(h), dx = dh·Wd (dh stored, fp32);
  - per d_out tile: G = dy^T·act(h) and Σ_rows dy, giving dWu = scale·G, dbu = scale·Σ dy and
    dscale = Σ_j Wu⊙G + bu·Σ dy without recomputing the output;
  - per d_in tile: dWd = dh^T·x and (first tile) dbd = Σ_rows dh.
  Column sums are dots with a block of ones, so the kernels use only Triton *builtins* (no ``tl.sum``).

Why builtins only, and why kernels are decorated on first use: the Triton interpreter
(``TRITON_INTERPRET=1``, how the tests run these kernels on CPU) cannot call Triton's own
``@triton.jit`` library functions (``tl.sum``, ``tl.sigmoid``, ``tl.zeros``) when ``triton`` was
imported before the variable was set, which happens in any process that imported ``peft`` or
``transformers`` first. Builtins work either way, and decorating each kernel when it is first
launched (once per mode) makes the variable take effect at call time, whatever was imported before.

Matmuls run in fp32 with IEEE precision, or TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is
set: the same precision ``F.linear`` gives the reference. Not tuned: block sizes are fixed
heuristics, chosen without a GPU at hand (see BENCHMARKS.md for measured speed, when there is one).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

#: Activation name -> the id the kernels branch on (a compile-time constant).
ACTIVATION_IDS = {"identity": 0, "relu": 1, "gelu": 2, "silu": 3, "tanh": 4}
#: Largest bottleneck width b the kernels hold in registers; wider adapters use the torch reference.
MAX_BOTTLENECK = 256
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ONES_WIDTH = 16  # the smallest dot operand width Triton compiles; column sums use a [rows, 16] block of ones


def supports(x, down_weight, up_weight, scale, activation, residual=None, down_bias=None, up_bias=None) -> bool:
    """Whether the Triton kernel computes this call (the dispatcher uses the reference otherwise)."""
    if activation not in ACTIVATION_IDS or x.dtype not in FLOAT_DTYPES or x.dim() < 1:
        return False
    if down_weight.dim() != 2 or up_weight.dim() != 2:
        return False
    b, d_in = down_weight.shape
    d_out = up_weight.shape[0]
    if x.shape[-1] != d_in or up_weight.shape[1] != b or not 1 <= b <= MAX_BOTTLENECK:
        return False
    tensors = [x, down_weight, up_weight, residual, down_bias, up_bias]
    if isinstance(scale, torch.Tensor):
        if scale.dim() > 1 or scale.numel() not in (1, d_out):
            return False  # other shapes broadcast the output to a new shape; leave those to the reference
        tensors.append(scale)
    if residual is not None and residual.shape != (*x.shape[:-1], d_out):
        return False
    if down_bias is not None and down_bias.shape != (b,) or up_bias is not None and up_bias.shape != (d_out,):
        return False
    present = [t for t in tensors if t is not None]
    return all(t.device == x.device and t.dtype in FLOAT_DTYPES for t in present)


def bottleneck_adapter_triton(
    x: torch.Tensor,
    down_weight: torch.Tensor,
    up_weight: torch.Tensor,
    scale: torch.Tensor | float,
    activation: str,
    residual: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
    up_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + scale * up(act(down(x)))`` with fused Triton kernels; see the module docstring."""
    if not supports(x, down_weight, up_weight, scale, activation, residual, down_bias, up_bias):
        raise ValueError(
            f"bottleneck_adapter_triton: unsupported call (activation {activation!r}, x {tuple(x.shape)} {x.dtype}, "
            f"down_weight {tuple(down_weight.shape)}, up_weight {tuple(up_weight.shape)}); the kernel takes "
            f"activations {', '.join(ACTIVATION_IDS)}, a bottleneck of at most {MAX_BOTTLENECK}, fp32/fp16/bf16 "
            "tensors on one device, a scalar or per-output scale and a residual shaped like the output. "
            "Call ftplugins.kernels.bottleneck.bottleneck_adapter, which falls back to the reference."
        )
    scale_tensor = scale if isinstance(scale, torch.Tensor) else None
    scale_value = None if scale_tensor is not None else float(scale)
    inputs = (x, down_weight, up_weight, scale_tensor, residual, down_bias, up_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _BottleneckAdapter.apply(
            x, down_weight, up_weight, scale_tensor, scale_value, activation, residual, down_bias, up_bias
        )
    # Inference: no autograd node, and the hidden activation is not written out for a backward.
    return _forward(x, down_weight, up_weight, scale_tensor, scale_value, activation, residual, down_bias, up_bias)[0]


class _BottleneckAdapter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, down_weight, up_weight, scale_tensor, scale_value, activation, residual, down_bias, up_bias):
        out, x2, wd, wu, scale_vec, hidden = _forward(
            x, down_weight, up_weight, scale_tensor, scale_value, activation, residual, down_bias, up_bias,
            save_hidden=True,
        )
        ctx.save_for_backward(x2, wd, wu, scale_vec, up_bias, hidden)
        ctx.activation = activation
        ctx.shapes = (x.shape, scale_tensor.shape if scale_tensor is not None else None)
        ctx.dtypes = tuple(
            t.dtype if t is not None else None for t in (down_weight, up_weight, scale_tensor, residual, down_bias)
        )
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x2, wd, wu, scale_vec, up_bias, hidden = ctx.saved_tensors
        x_shape, scale_shape = ctx.shapes
        wd_dtype, wu_dtype, scale_dtype, residual_dtype, db_dtype = ctx.dtypes
        need = ctx.needs_input_grad
        need_x, need_wd, need_wu, need_scale, need_res, need_db, need_ub = (
            need[0], need[1], need[2], need[3], need[6], need[7], need[8]
        )
        m, d_in = x2.shape
        b, d_out = wd.shape[0], wu.shape[0]
        dy = grad_out.reshape(m, d_out).contiguous()
        device = dy.device
        blocks = _blocks(b)
        act, precision, scale_stride = ACTIVATION_IDS[ctx.activation], _precision(), 0 if scale_vec.numel() == 1 else 1

        dx = torch.empty((m, d_in), device=device, dtype=x2.dtype) if need_x else None
        d_hidden = torch.empty((m, b), device=device, dtype=torch.float32) if (need_x or need_wd or need_db) else None
        if d_hidden is not None and m > 0:
            _kernel(_backward_rows_kernel)[(triton.cdiv(m, blocks["BLOCK_M"]),)](
                dy, hidden, wu, scale_vec, wd, d_hidden, _or(dx, d_hidden),
                m, d_in, b, d_out, scale_stride,
                NEED_DX=need_x, ACT=act, PRECISION=precision, **blocks,
            )
        elif d_hidden is not None:
            d_hidden.zero_()
            if dx is not None:
                dx.zero_()

        dwu = torch.zeros((d_out, b), device=device, dtype=wu_dtype) if need_wu else None
        dub = torch.zeros(d_out, device=device, dtype=up_bias.dtype) if need_ub else None
        dscale = torch.zeros(d_out, device=device, dtype=torch.float32) if need_scale else None
        if (need_wu or need_ub or need_scale) and m > 0:
            _kernel(_backward_up_kernel)[(triton.cdiv(d_out, blocks["BLOCK_N"]),)](
                dy, hidden, wu, _or(up_bias, dy), scale_vec, _or(dwu, dy), _or(dub, dy), _or(dscale, dy),
                m, b, d_out, scale_stride,
                HAS_UB=up_bias is not None, NEED_DWU=need_wu, NEED_DUB=need_ub, NEED_DSCALE=need_scale,
                ACT=act, PRECISION=precision, ONES=ONES_WIDTH,
                BLOCK_M=blocks["BLOCK_M"], BLOCK_B=blocks["BLOCK_B"], BLOCK_N=blocks["BLOCK_N"],
            )

        dwd = torch.zeros((b, d_in), device=device, dtype=wd_dtype) if need_wd else None
        ddb = torch.zeros(b, device=device, dtype=db_dtype) if need_db else None
        if (need_wd or need_db) and m > 0:
            _kernel(_backward_down_kernel)[(triton.cdiv(d_in, blocks["BLOCK_K"]),)](
                d_hidden, x2, _or(dwd, d_hidden), _or(ddb, d_hidden),
                m, d_in, b,
                NEED_DWD=need_wd, NEED_DDB=need_db, PRECISION=precision, ONES=ONES_WIDTH,
                BLOCK_M=blocks["BLOCK_M"], BLOCK_K=blocks["BLOCK_K"], BLOCK_B=blocks["BLOCK_B"],
            )

        if dscale is not None:
            dscale = (dscale.sum() if scale_vec.numel() == 1 else dscale).reshape(scale_shape).to(scale_dtype)
        d_residual = dy.to(residual_dtype).reshape(*x_shape[:-1], d_out) if need_res else None
        dx = dx.reshape(x_shape) if dx is not None else None
        return dx, dwd, dwu, dscale, None, None, d_residual, ddb, dub


# --- host-side helpers ---------------------------------------------------------------------------


def _forward(x, down_weight, up_weight, scale_tensor, scale_value, activation, residual, down_bias, up_bias,
             save_hidden=False):
    """Launch the forward kernel; returns the output and what the backward needs (hidden: pre-activation h)."""
    b, d_in = down_weight.shape
    d_out = up_weight.shape[0]
    x2 = x.reshape(-1, d_in).contiguous()
    m = x2.shape[0]
    wd, wu = down_weight.contiguous(), up_weight.contiguous()
    scale_vec = _scale_vector(scale_tensor, scale_value, x.device)
    out = torch.empty((m, d_out), device=x.device, dtype=x.dtype)
    hidden = torch.empty((m, b), device=x.device, dtype=torch.float32) if save_hidden else None
    res = residual.reshape(m, d_out).contiguous() if residual is not None else None
    blocks = _blocks(b)
    if m > 0:
        _kernel(_forward_kernel)[(triton.cdiv(m, blocks["BLOCK_M"]),)](
            x2, wd, _or(down_bias, out), wu, _or(up_bias, out), scale_vec, _or(res, out), out, _or(hidden, out),
            m, d_in, b, d_out, 0 if scale_vec.numel() == 1 else 1,
            HAS_DB=down_bias is not None, HAS_UB=up_bias is not None, HAS_RES=res is not None,
            SAVE_H=save_hidden, ACT=ACTIVATION_IDS[activation], PRECISION=_precision(), **blocks,
        )
    return out.reshape(*x.shape[:-1], d_out), x2, wd, wu, scale_vec, hidden


def _scale_vector(scale_tensor, scale_value, device) -> torch.Tensor:
    """The scale as an fp32 vector the kernels index with stride 0 (scalar) or 1 (one per output)."""
    if scale_tensor is None:
        return torch.full((1,), scale_value, device=device, dtype=torch.float32)
    return scale_tensor.detach().reshape(-1).to(device=device, dtype=torch.float32).contiguous()


def _or(tensor, placeholder):
    """Kernels take a pointer for every optional input; an absent one is never read (its flag is off)."""
    return tensor.contiguous() if tensor is not None else placeholder


def _blocks(b: int) -> dict[str, int]:
    """Tile sizes: smaller tiles as b grows keep the [rows, b] fp32 accumulators in registers and the
    pipelined operand tiles within an A100's 163 KiB of shared memory (checked by compiling for sm_80/sm_90)."""
    block_b = max(16, triton.next_power_of_2(b))
    if block_b <= 64:
        return {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_B": block_b, "BLOCK_N": 64}
    if block_b <= 128:
        return {"BLOCK_M": 32, "BLOCK_K": 64, "BLOCK_B": block_b, "BLOCK_N": 64}
    return {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_B": block_b, "BLOCK_N": 32}


def _precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


_launchers: dict[tuple[str, bool], object] = {}


def _kernel(fn):
    """``triton.jit(fn)``, made once per mode: Triton reads TRITON_INTERPRET when it decorates."""
    interpret = bool(triton.knobs.runtime.interpret)
    key = (fn.__name__, interpret)
    if key not in _launchers:
        _launchers[key] = triton.jit(fn)
    return _launchers[key]


# --- kernels (Triton builtins only; see the module docstring) ------------------------------------
# Every kernel inlines the activation (ACT: 0 identity, 1 relu, 2 gelu (erf), 3 silu, 4 tanh) because a
# kernel may not call a helper that was decorated in another mode.


def _forward_kernel(
    X, WD, DB, WU, UB, SCALE, RES, OUT, H,
    M, K, B, N, SCALE_STRIDE,
    HAS_DB: tl.constexpr, HAS_UB: tl.constexpr, HAS_RES: tl.constexpr, SAVE_H: tl.constexpr,
    ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    cb = tl.arange(0, BLOCK_B)
    b_ok = cb < B

    h = tl.full((BLOCK_M, BLOCK_B), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(X + rows64[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wd_t = tl.load(WD + cb[None, :] * K + ks[:, None], mask=k_ok[:, None] & b_ok[None, :], other=0.0)
        h += tl.dot(x.to(tl.float32), wd_t.to(tl.float32), input_precision=PRECISION)
    if HAS_DB:
        h += tl.load(DB + cb, mask=b_ok, other=0.0).to(tl.float32)[None, :]
    if SAVE_H:
        tl.store(H + rows64[:, None] * B + cb[None, :], h, mask=row_ok[:, None] & b_ok[None, :])

    # act(0) = 0 for every activation, so the padded bottleneck columns stay zero.
    if ACT == 1:
        a = tl.maximum(h, 0.0)
    elif ACT == 2:
        a = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
    elif ACT == 3:
        a = h / (1.0 + tl.exp(-h))
    elif ACT == 4:
        a = 2.0 / (1.0 + tl.exp(-2.0 * h)) - 1.0
    else:
        a = h

    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        wu_t = tl.load(WU + ns[None, :] * B + cb[:, None], mask=b_ok[:, None] & n_ok[None, :], other=0.0)
        out = tl.dot(a, wu_t.to(tl.float32), input_precision=PRECISION)
        if HAS_UB:
            out += tl.load(UB + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out = out * tl.load(SCALE + ns * SCALE_STRIDE, mask=n_ok, other=0.0)[None, :]
        mask = row_ok[:, None] & n_ok[None, :]
        offsets = rows64[:, None] * N + ns[None, :]
        if HAS_RES:
            out += tl.load(RES + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + offsets, out.to(OUT.dtype.element_ty), mask=mask)


def _backward_rows_kernel(
    DY, H, WU, SCALE, WD, DH, DX,
    M, K, B, N, SCALE_STRIDE,
    NEED_DX: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    cb = tl.arange(0, BLOCK_B)
    b_ok = cb < B

    da = tl.full((BLOCK_M, BLOCK_B), 0.0, tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        dy = tl.load(DY + rows64[:, None] * N + ns[None, :], mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        g = dy.to(tl.float32) * tl.load(SCALE + ns * SCALE_STRIDE, mask=n_ok, other=0.0)[None, :]
        wu = tl.load(WU + ns[:, None] * B + cb[None, :], mask=n_ok[:, None] & b_ok[None, :], other=0.0)
        da += tl.dot(g, wu.to(tl.float32), input_precision=PRECISION)

    h_mask = row_ok[:, None] & b_ok[None, :]
    h = tl.load(H + rows64[:, None] * B + cb[None, :], mask=h_mask, other=0.0)
    if ACT == 1:
        d_act = tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d_act = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476)) + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)
    elif ACT == 3:
        sig = 1.0 / (1.0 + tl.exp(-h))
        d_act = sig * (1.0 + h * (1.0 - sig))
    elif ACT == 4:
        t = 2.0 / (1.0 + tl.exp(-2.0 * h)) - 1.0
        d_act = 1.0 - t * t
    else:
        d_act = tl.full((BLOCK_M, BLOCK_B), 1.0, tl.float32)
    dh = da * d_act  # zero in padded columns: da is (Wu is masked to zero there)
    tl.store(DH + rows64[:, None] * B + cb[None, :], dh, mask=h_mask)

    if NEED_DX:
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            wd = tl.load(WD + cb[:, None] * K + ks[None, :], mask=b_ok[:, None] & k_ok[None, :], other=0.0)
            dx = tl.dot(dh, wd.to(tl.float32), input_precision=PRECISION)
            mask = row_ok[:, None] & k_ok[None, :]
            tl.store(DX + rows64[:, None] * K + ks[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _backward_up_kernel(
    DY, H, WU, UB, SCALE, DWU, DUB, DSCALE,
    M, B, N, SCALE_STRIDE,
    HAS_UB: tl.constexpr, NEED_DWU: tl.constexpr, NEED_DUB: tl.constexpr, NEED_DSCALE: tl.constexpr,
    ACT: tl.constexpr, PRECISION: tl.constexpr, ONES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    cb = tl.arange(0, BLOCK_B)
    b_ok = cb < B
    first_column = tl.arange(0, ONES)[None, :] == 0
    ones_m = tl.full((BLOCK_M, ONES), 1.0, tl.float32)

    grad = tl.full((BLOCK_N, BLOCK_B), 0.0, tl.float32)  # Σ_rows dy[m, n]·act(h)[m, j], before the scale
    dy_sum = tl.full((BLOCK_N, ONES), 0.0, tl.float32)  # Σ_rows dy[m, n], in every column
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)
        dy = tl.load(DY + rows64[:, None] * N + ns[None, :], mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        h = tl.load(H + rows64[:, None] * B + cb[None, :], mask=row_ok[:, None] & b_ok[None, :], other=0.0)
        if ACT == 1:
            a = tl.maximum(h, 0.0)
        elif ACT == 2:
            a = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
        elif ACT == 3:
            a = h / (1.0 + tl.exp(-h))
        elif ACT == 4:
            a = 2.0 / (1.0 + tl.exp(-2.0 * h)) - 1.0
        else:
            a = h
        dy_t = tl.trans(dy.to(tl.float32))
        grad += tl.dot(dy_t, a, input_precision=PRECISION)
        if NEED_DUB or (NEED_DSCALE and HAS_UB):
            dy_sum += tl.dot(dy_t, ones_m, input_precision="ieee")

    scale = tl.load(SCALE + ns * SCALE_STRIDE, mask=n_ok, other=0.0)
    w_mask = n_ok[:, None] & b_ok[None, :]
    if NEED_DWU:
        tl.store(DWU + ns[:, None] * B + cb[None, :], (grad * scale[:, None]).to(DWU.dtype.element_ty), mask=w_mask)
    column_mask = n_ok[:, None] & first_column
    column_offsets = ns[:, None] + 0 * tl.arange(0, ONES)[None, :]
    if NEED_DUB:
        tl.store(DUB + column_offsets, (dy_sum * scale[:, None]).to(DUB.dtype.element_ty), mask=column_mask)
    if NEED_DSCALE:
        # dscale[n] = Σ_rows dy·(act(h)·Wu^T + bu) = Σ_j Wu[n, j]·grad[n, j] + bu[n]·Σ_rows dy[m, n]
        wu = tl.load(WU + ns[:, None] * B + cb[None, :], mask=w_mask, other=0.0).to(tl.float32)
        per_output = tl.dot(wu * grad, tl.full((BLOCK_B, ONES), 1.0, tl.float32), input_precision="ieee")
        if HAS_UB:
            per_output += dy_sum * tl.load(UB + ns, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(DSCALE + column_offsets, per_output, mask=column_mask)


def _backward_down_kernel(
    DH, X, DWD, DDB,
    M, K, B,
    NEED_DWD: tl.constexpr, NEED_DDB: tl.constexpr, PRECISION: tl.constexpr, ONES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0)
    ks = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    cb = tl.arange(0, BLOCK_B)
    b_ok = cb < B
    ones_m = tl.full((BLOCK_M, ONES), 1.0, tl.float32)

    grad = tl.full((BLOCK_B, BLOCK_K), 0.0, tl.float32)
    dh_sum = tl.full((BLOCK_B, ONES), 0.0, tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)
        dh = tl.load(DH + rows64[:, None] * B + cb[None, :], mask=row_ok[:, None] & b_ok[None, :], other=0.0)
        dh_t = tl.trans(dh)
        if NEED_DWD:
            x = tl.load(X + rows64[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            grad += tl.dot(dh_t, x.to(tl.float32), input_precision=PRECISION)
        if NEED_DDB:
            if pid == 0:  # one program sums dh over the rows for the down bias
                dh_sum += tl.dot(dh_t, ones_m, input_precision="ieee")

    if NEED_DWD:
        tl.store(DWD + cb[:, None] * K + ks[None, :], grad.to(DWD.dtype.element_ty), mask=b_ok[:, None] & k_ok[None, :])
    if NEED_DDB:
        if pid == 0:
            first_column = tl.arange(0, ONES)[None, :] == 0
            offsets = cb[:, None] + 0 * tl.arange(0, ONES)[None, :]
            tl.store(DDB + offsets, dh_sum.to(DDB.dtype.element_ty), mask=b_ok[:, None] & first_column)
