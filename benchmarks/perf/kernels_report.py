"""The kernel benchmark's markdown tables, from its JSON result (no torch import: the report tool reads it)."""

from __future__ import annotations

from benchmarks import common


def markdown(result: dict) -> str:
    lines = [f"Kernels on {result['machine']['device_name']} (torch {result['machine']['versions'].get('torch')}); "
             f"`{result['machine']['command']}`\n",
             "Sparse masked AdamW over the selected entries of an 85M model's 84 linear weights "
             "(one optimizer step):\n"]
    multi = all("multi_tensor_triton_ms" in r for r in result["sparse_adamw"])
    lines.append(common.markdown_table(
        ["density", "dtype", "selected"] + (["multi-tensor Triton ms", "vs fused dense"] if multi else [])
        + ["Triton ms", "torch reference ms", "Triton speed-up", "fused AdamW, same count dense ms",
           "fused AdamW, all weights ms"],
        [[f"{r['density']:.0%}", r["dtype"], f"{r['selected']:,}"]
         + ([common.fmt(r["multi_tensor_triton_ms"]),
             f"{r['multi_tensor_triton_ms'] / r['dense_same_count_fused_ms']:.1f}×"] if multi else [])
         + [common.fmt(r["triton_ms"]), common.fmt(r["reference_ms"]), f"{r['reference_ms'] / r['triton_ms']:.1f}×",
            common.fmt(r["dense_same_count_fused_ms"]), common.fmt(r["dense_all_weights_fused_ms"])]
         for r in result["sparse_adamw"]]))
    if all("multi_tensor_device_ms" in r for r in result["sparse_adamw"]):
        lines.append("\nThe multi-tensor step split into the host's time to queue it and the GPU's time alone "
                     "(a sleep kernel queued first hides the host), against the fused dense AdamW's GPU time:\n")
        lines.append(common.markdown_table(
            ["density", "dtype", "multi-tensor host ms", "multi-tensor GPU ms", "fused dense GPU ms",
             "GPU vs fused dense"],
            [[f"{r['density']:.0%}", r["dtype"], common.fmt(r["multi_tensor_host_ms"]),
              common.fmt(r["multi_tensor_device_ms"]), common.fmt(r["dense_same_count_fused_device_ms"]),
              f"{r['multi_tensor_device_ms'] / r['dense_same_count_fused_device_ms']:.1f}×"]
             for r in result["sparse_adamw"]]))
    if result.get("bottleneck"):  # runs before the fused bottleneck kernel was removed
        lines.append("\nBottleneck adapter forward + backward (ReLU, residual, biases, per-output scale):\n")
        lines.append(common.markdown_table(
            ["tokens", "d", "b", "dtype", "Triton ms", "torch reference ms", "Triton speed-up"],
            [[r["tokens"], r["d"], r["b"], r["dtype"], common.fmt(r["triton_ms"]), common.fmt(r["reference_ms"]),
              f"{r['reference_ms'] / r['triton_ms']:.2f}×"] for r in result["bottleneck"]]))
    return "\n".join(lines) + "\n"
