"""bitsandbytes 4-bit layers on CPUs with AVX512-BF16: the same results on every machine, and gradients that flow.

On such a CPU, bitsandbytes (0.49+) repacks a ``Linear4bit`` weight for its fused CPU kernel the first time the
layer runs in eval mode without gradients (``Linear4bit.forward``), and keeps it packed. Two things follow that
do not happen on other CPUs, so a model's behaviour would depend on the machine:

* the repacking reshapes the block scales to ``[out_features, in_features // blocksize]`` and tiles rows by 32,
  so it fails with a bare ``RuntimeError: shape '[32, 0]' is invalid`` for a layer whose in-features are not a
  multiple of the quantization block size (64 by default) or whose out-features are not a multiple of 32;
* once packed, every later forward, in training mode too, goes through ``gemv_4bit``, which has no autograd
  formula: nothing below the layer receives a gradient. An evaluation before or during training (the Trainer's
  ``eval_strategy``, a baseline measured first) would silently stop the adapters under it from learning.

:func:`guard_cpu_4bit_packing` handles both: for a model that will be trained it sends every 4-bit layer through
the generic path (the one every other CPU takes; weights already packed are unpacked first), and for inference
it does so only for the layers whose shapes the packing cannot take, so layers of real widths keep the fast
kernel. ftplugins calls it on every model a run trains, every model its PEFT tuners adapt, and every model an
adapter is loaded onto.
"""

from __future__ import annotations

import sys
from typing import Any

#: Rows of the weight that bitsandbytes' CPU packing tiles together (``block_n`` of its packing function).
PACKING_ROW_TILE = 32


def packable_on_cpu(module: Any) -> bool:
    """Whether bitsandbytes' AVX512-BF16 repacking accepts this ``Linear4bit``'s shapes."""
    state = getattr(module.weight, "quant_state", None)
    if state is None or getattr(state, "packing_format_for_cpu", False):
        return True  # not quantized yet (bitsandbytes quantizes on the move to a device), or packed already
    if len(state.shape) != 2:
        return False
    out_features, in_features = state.shape
    return in_features % state.blocksize == 0 and in_features % 2 == 0 and out_features % PACKING_ROW_TILE == 0


def guard_cpu_4bit_packing(model: Any, training: bool) -> list[str]:
    """Keep ``model``'s 4-bit layers off bitsandbytes' packed CPU path where it would break them.

    ``training``: the model will be trained, so every 4-bit layer stays on the generic path (unpacked if an
    earlier eval forward packed it). Otherwise only the layers whose shapes the packing cannot take.
    Returns the names of the layers switched. Never imports bitsandbytes: a model cannot hold a ``Linear4bit``
    unless bitsandbytes was imported already.
    """
    if "bitsandbytes" not in sys.modules or not hasattr(model, "named_modules"):
        return []
    from bitsandbytes.nn import Linear4bit

    switched = []
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        if training:
            _unpack(module)
        if getattr(module, "support_avx512bf16_for_cpu", False) and (training or not packable_on_cpu(module)):
            module.support_avx512bf16_for_cpu = False
            switched.append(name)
    return switched


def _unpack(module: Any) -> None:
    """Undo bitsandbytes' CPU packing of one layer (the 4-bit codes exactly; the block scales as the packing left
    them, rounded to bf16).

    Relies on ``bitsandbytes.functional._convert_weight_packed_for_cpu_inverse`` (bitsandbytes 0.49-0.50), the
    function ``Linear4bit._save_to_state_dict`` calls. Its inverse leaves un-nested block scales in the packed
    ``[in/blocksize, out]`` layout, which the generic kernels would read in the wrong order, so they are put back
    in the row-major order of the weight here. ``tests/test_quantized_cpu.py`` checks the round trip.
    """
    state = getattr(module.weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    nested = state.original_nested
    data, state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
    if not nested:
        state.absmax = state.absmax.t().contiguous().reshape(-1).float()
    module.weight.data, module.weight.quant_state = data, state
    if getattr(module, "quant_state", None) is not None:
        module.quant_state = state


#: bitsandbytes' CPU backend logs this at import on AVX512-BF16 CPUs when the optional ``kernels`` package (which
#: fetches a kernel from the Hub at run time) is absent; bitsandbytes works without it, so nobody can act on it.
KERNEL_HUB_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def drop_kernel_hub_notice(record: Any) -> bool:
    """A ``logging`` filter: False for bitsandbytes' kernel-hub notice, True for everything else."""
    return KERNEL_HUB_NOTICE not in str(record.msg)


def quiet_bitsandbytes_notice() -> None:
    """Install :func:`drop_kernel_hub_notice` on bitsandbytes' CPU-backend logger (no import of bitsandbytes)."""
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if drop_kernel_hub_notice not in logger.filters:
        logger.addFilter(drop_kernel_hub_notice)
