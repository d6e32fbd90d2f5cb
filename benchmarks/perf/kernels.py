"""``python -m benchmarks.perf.kernels``: the Triton kernels against their torch references on a GPU.

Times, with CUDA events (median of ``--repeats`` after warm-up):

the sparse masked AdamW step over index lists (what LIFT / LT-SFT / SaRA run every step) for the selected
entries of an 85M-parameter model's linear weights at several densities: the multi-tensor Triton kernel (one
launch for all 84 tensors, what the sparse engine runs on CUDA) vs the per-tensor Triton kernel (84 launches)
vs the torch reference (index_select / index_copy_) vs ``torch.optim.AdamW(fused=True)`` on a dense tensor of
the same number of entries (the floor: no gather/scatter; the multi-tensor kernel's goal is within 2x of it)
vs the same fused AdamW on every weight (full fine-tuning). For the multi-tensor kernel and the fused floor it also
splits the step into the host's time to queue it and the GPU's time alone (a sleep kernel queued first hides the
host), since a launch whose kernel takes microseconds is timed mostly as the host's Python. (The fused
bottleneck kernel this harness timed was 2-30x slower than cuBLAS and was removed.)

Writes ``kernels.json`` and ``kernels.md`` to ``--out``. Needs CUDA and the kernels (``pip install ./kernels``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

from benchmarks import common
from benchmarks.perf.kernels_report import markdown

# The linear weights of the 85M Llama-shaped benchmark model (12 layers, d=768, FFN 2048).
LINEAR_SHAPES = [(768, 768)] * 4 + [(2048, 768)] * 2 + [(768, 2048)]
LAYERS = 12
HYPER = dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


#: GPU cycles of the sleep queued ahead of a GPU-only timing (~10 ms on an H200 at ~2 GHz): longer than the
#: host takes to queue any of the timed steps, so the events bracket the kernels alone.
SLEEP_CYCLES = 20_000_000


def cuda_time_ms(fn, repeats: int, warmup: int = 5, hide_host: bool = False) -> float:
    """CUDA-event median of ``fn`` over ``repeats`` calls after ``warmup``.

    ``hide_host``: the GPU's time alone. A sleep kernel queued first keeps the GPU busy while the host prepares
    ``fn``'s launches, so the start event fires with them already queued (what a step costs inside a busy training
    loop, where the host runs ahead of the GPU)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if hide_host:
            torch.cuda._sleep(SLEEP_CYCLES)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return common.median(times)


def host_time_ms(fn, repeats: int, warmup: int = 5) -> float:
    """The host's time to queue ``fn`` (no synchronisation inside: what the Python side of a step costs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return common.median(times)


def sparse_adamw_rows(density: float, dtype: torch.dtype, repeats: int) -> dict:
    from ftplugins.kernels.sparse_adamw_reference import sparse_adamw_reference
    from ftplugins.kernels.sparse_adamw_multi import SparseAdamWTensor
    from ftplugins_kernels.sparse_adamw_multi_triton import sparse_adamw_multi_triton
    from ftplugins_kernels.sparse_adamw_triton import sparse_adamw_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = []
    for shape in LINEAR_SHAPES * LAYERS:
        param = torch.randn(shape, device="cuda", generator=gen).to(dtype).view(-1)
        k = max(1, int(density * param.numel()))
        indices = torch.randperm(param.numel(), device="cuda", generator=gen)[:k].sort().values.to(torch.int32)
        state = [torch.randn(k, device="cuda", generator=gen), torch.zeros(k, device="cuda"),
                 torch.zeros(k, device="cuda")]
        master = param[indices.long()].float() if dtype != torch.float32 else None
        tensors.append((param, state[0], state[1], state[2], indices, master))
    selected = sum(t[4].numel() for t in tensors)
    total = sum(t[0].numel() for t in tensors)

    def run(kernel):
        def step():
            for param, grad, m, v, idx, master in tensors:
                kernel(param, grad, m, v, idx, master, **HYPER, step=3)
        return step

    updates = [SparseAdamWTensor(*t, **HYPER, step=3) for t in tensors]

    dense_same = torch.nn.Parameter(torch.randn(selected, device="cuda"))
    dense_same.grad = torch.randn(selected, device="cuda")
    fused_same = torch.optim.AdamW([dense_same], lr=1e-4, fused=True)
    full = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in LINEAR_SHAPES * LAYERS]
    for p in full:
        p.grad = torch.randn_like(p)
    fused_full = torch.optim.AdamW(full, lr=1e-4, fused=True)
    return {
        "density": density, "dtype": str(dtype).removeprefix("torch."), "selected": selected, "weights": total,
        "multi_tensor_triton_ms": cuda_time_ms(lambda: sparse_adamw_multi_triton(updates), repeats),
        "multi_tensor_host_ms": host_time_ms(lambda: sparse_adamw_multi_triton(updates), repeats),
        "multi_tensor_device_ms": cuda_time_ms(lambda: sparse_adamw_multi_triton(updates), repeats, hide_host=True),
        "dense_same_count_fused_device_ms": cuda_time_ms(fused_same.step, repeats, hide_host=True),
        "triton_ms": cuda_time_ms(run(sparse_adamw_triton), repeats),
        "reference_ms": cuda_time_ms(run(sparse_adamw_reference), repeats),
        "dense_same_count_fused_ms": cuda_time_ms(fused_same.step, repeats),
        "dense_all_weights_fused_ms": cuda_time_ms(fused_full.step, repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "kernels-gpu"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.perf.kernels needs a CUDA GPU (the CPU runs the kernels only under the "
                         "Triton interpreter, which the tests use for correctness).")
    if importlib.util.find_spec("ftplugins_kernels") is None:
        raise SystemExit("benchmarks.perf.kernels times the optional Triton kernels: install them with "
                         "`pip install ./kernels` (import name ftplugins_kernels).")
    dirty = common.require_clean_tree(args.allow_dirty)
    os.environ.pop("TRITON_INTERPRET", None)
    result = {
        "machine": common.machine_info("cuda", packages=["triton"], dirty=dirty),
        "sparse_adamw": [sparse_adamw_rows(density, dtype, args.repeats)
                         for density in (0.01, 0.05, 0.2) for dtype in (torch.float32, torch.bfloat16)],
    }
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, "kernels.json"), result)
    common.write_text(os.path.join(args.out, "kernels.md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
