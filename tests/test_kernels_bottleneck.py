"""The Triton fused bottleneck adapter against its torch reference: values and every gradient, on CPU
under the Triton interpreter; and the dispatcher's routing.

How the interpreter is switched on inside one pytest process: each test sets ``TRITON_INTERPRET=1``
with ``monkeypatch`` (so no other test module sees it). That is enough although ``triton`` was imported
earlier without it (``peft`` and ``transformers`` import it; this module imports ``peft`` first on
purpose): ``bottleneck_triton`` decorates its kernels when they are first launched, once per mode, and
uses only Triton builtins, which the interpreter patches whenever it runs. GPU speed is not measured
here (see the benchmark harness).
"""

from __future__ import annotations

import sys

import peft  # noqa: F401  - imports triton before TRITON_INTERPRET is set, the situation of a real test session
import pytest
import torch

pytest.importorskip("triton")

from ftplugins.kernels import bottleneck_triton  # noqa: E402
from ftplugins.kernels.bottleneck import bottleneck_adapter  # noqa: E402
from ftplugins.kernels.bottleneck_reference import bottleneck_adapter_reference  # noqa: E402
from ftplugins.kernels.bottleneck_triton import bottleneck_adapter_triton  # noqa: E402

TRITON_NODE = "_BottleneckAdapterBackward"


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    assert "triton" in sys.modules  # imported before the variable was set: the kernels must still interpret
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FTPLUGINS_KERNELS", raising=False)


def make_inputs(lead, d_in, b, d_out, *, residual, biases, scale, dtype=torch.float32, weight_dtype=torch.float32,
                seed=0):
    """Adapter inputs; ``scale`` is "float", "scalar" (0-d tensor) or "vector" (one per output), learnable."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, std=1.0, dtype=torch.float32):
        return (std * torch.randn(shape, generator=gen)).to(dtype).requires_grad_()

    inputs = {
        "x": rand((*lead, d_in), dtype=dtype),
        "down_weight": rand((b, d_in), std=d_in**-0.5, dtype=weight_dtype),
        "up_weight": rand((d_out, b), std=b**-0.5, dtype=weight_dtype),
        "scale": {"float": 0.7, "scalar": rand(()), "vector": rand((d_out,))}[scale],
        "residual": rand((*lead, d_out), dtype=dtype) if residual else None,
        "down_bias": rand((b,), std=0.5, dtype=weight_dtype) if biases else None,
        "up_bias": rand((d_out,), std=0.5, dtype=weight_dtype) if biases else None,
    }
    return inputs


def grads_of(fn, inputs, activation, upstream_seed=1):
    out = fn(activation=activation, **inputs)
    leaves = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(out.dtype)
    grads = torch.autograd.grad(out, list(leaves.values()), upstream)
    return out, dict(zip(leaves, grads)), out.grad_fn


def assert_close(got, want, name):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if want.dtype == torch.float32:
        tol = {"rtol": 1e-4, "atol": 1e-5}
    else:  # fp16 / bf16 results are both rounded from fp32; they may differ by one unit in the last place
        tol = {"rtol": 1.6e-2 if want.dtype == torch.bfloat16 else 2e-3, "atol": 1e-2}
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


ACTIVATIONS = ["identity", "relu", "gelu", "silu", "tanh"]

# (leading shape of x, d_in, b, d_out, residual, biases, scale). Block sizes are 64 (32 for b > 128): the shapes
# cover partial tiles, several row tiles (130 rows), several d_in / d_out iterations (100, 70), exact multiples
# (64) and the widest bottleneck the kernel takes (b = 256).
SHAPES = [
    ((3, 7), 40, 8, 50, True, True, "vector"),
    ((130,), 100, 24, 70, False, False, "scalar"),
    ((64,), 64, 16, 64, True, False, "float"),
    ((2, 5), 33, 3, 20, False, True, "scalar"),
    ((9,), 70, 256, 40, True, True, "vector"),
]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, (*s[0], s[1], s[2], s[3]))))
def test_fp32_values_and_gradients_match_the_reference(activation, shape):
    lead, d_in, b, d_out, residual, biases, scale = shape
    inputs = make_inputs(lead, d_in, b, d_out, residual=residual, biases=biases, scale=scale)
    out, grads, node = grads_of(bottleneck_adapter_triton, inputs, activation)
    ref, ref_grads, _ = grads_of(bottleneck_adapter_reference, inputs, activation)
    assert type(node).__name__ == TRITON_NODE
    assert_close(out, ref, "output")
    assert grads.keys() == ref_grads.keys() and len(grads) == 3 + (scale != "float") + residual + 2 * biases
    for name in grads:
        assert_close(grads[name], ref_grads[name], name)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_the_widest_bottleneck_matches_the_reference(activation):
    lead, d_in, b, d_out, residual, biases, scale = SHAPES[4]
    inputs = make_inputs(lead, d_in, b, d_out, residual=residual, biases=biases, scale=scale)
    out, grads, _ = grads_of(bottleneck_adapter_triton, inputs, activation)
    ref, ref_grads, _ = grads_of(bottleneck_adapter_reference, inputs, activation)
    assert_close(out, ref, "output")
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], name)


@pytest.mark.parametrize(
    "dtype, weight_dtype",
    [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)],
)
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_half_precision_inputs_match_the_reference(dtype, weight_dtype, activation):
    """A bf16/fp16 base with fp32 adapter weights (PEFT's default upcast) or all-bf16: fp32 inside, cast back."""
    inputs = make_inputs((4, 5), 48, 16, 40, residual=True, biases=True, scale="vector", dtype=dtype,
                         weight_dtype=weight_dtype)
    out, grads, _ = grads_of(bottleneck_adapter_triton, inputs, activation)
    ref, ref_grads, _ = grads_of(bottleneck_adapter_reference, inputs, activation)
    assert out.dtype == dtype
    assert_close(out, ref, "output")
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], name)


def test_only_the_requested_gradients_are_computed():
    """Frozen input (the adapter on the first layer of a frozen model) and a fixed scale: weights only."""
    inputs = make_inputs((6,), 24, 8, 24, residual=False, biases=True, scale="float")
    inputs["x"] = inputs["x"].detach()
    inputs["down_bias"] = inputs["down_bias"].detach()
    out, grads, _ = grads_of(bottleneck_adapter_triton, inputs, "tanh")
    ref, ref_grads, _ = grads_of(bottleneck_adapter_reference, inputs, "tanh")
    assert sorted(grads) == ["down_weight", "up_bias", "up_weight"]
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], name)


def test_inference_without_autograd_matches_the_reference():
    inputs = make_inputs((5, 3), 40, 8, 40, residual=True, biases=True, scale="vector")
    with torch.no_grad():
        out = bottleneck_adapter_triton(activation="silu", **inputs)
        ref = bottleneck_adapter_reference(activation="silu", **inputs)
    assert out.grad_fn is None
    assert_close(out, ref, "output")


def test_empty_input_gives_empty_output_and_zero_weight_gradients():
    inputs = make_inputs((0,), 16, 8, 16, residual=False, biases=True, scale="scalar")
    out, grads, _ = grads_of(bottleneck_adapter_triton, inputs, "gelu")
    assert out.shape == (0, 16)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())


def test_the_interpreter_switch_takes_effect_when_a_kernel_launches(monkeypatch):
    """Kernels are decorated per mode at launch, so setting TRITON_INTERPRET late (as these tests do) works,
    and a kernel first launched in one mode is not reused in the other."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    interpreted = bottleneck_triton._kernel(bottleneck_triton._forward_kernel)
    monkeypatch.delenv("TRITON_INTERPRET")
    compiled = bottleneck_triton._kernel(bottleneck_triton._forward_kernel)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(interpreted, InterpretedFunction) and isinstance(compiled, JITFunction)
    assert bottleneck_triton._kernel(bottleneck_triton._forward_kernel) is interpreted


# --- the dispatcher ------------------------------------------------------------------------------


def test_dispatcher_routes_to_triton_when_the_interpreter_is_on():
    inputs = make_inputs((3,), 32, 8, 32, residual=True, biases=True, scale="vector")
    out, _, node = grads_of(bottleneck_adapter, inputs, "gelu")
    assert type(node).__name__ == TRITON_NODE
    assert_close(out, bottleneck_adapter_reference(activation="gelu", **inputs), "output")


def test_kernels_off_routes_to_the_reference(monkeypatch):
    monkeypatch.setenv("FTPLUGINS_KERNELS", "off")
    inputs = make_inputs((3,), 32, 8, 32, residual=True, biases=True, scale="vector")
    out, _, node = grads_of(bottleneck_adapter, inputs, "gelu")
    assert type(node).__name__ != TRITON_NODE
    assert torch.equal(out, bottleneck_adapter_reference(activation="gelu", **inputs))


def test_cpu_tensors_without_the_interpreter_use_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    inputs = make_inputs((3,), 32, 8, 32, residual=False, biases=False, scale="float")
    _, _, node = grads_of(bottleneck_adapter, inputs, "relu")
    assert type(node).__name__ != TRITON_NODE


class _CudaLike:
    is_cuda = True


def test_gpu_policy_default_kernels_only_where_they_measured_faster(monkeypatch):
    from ftplugins.kernels import bottleneck as bottleneck_dispatcher
    from ftplugins.kernels.dispatch import use_triton

    monkeypatch.delenv("TRITON_INTERPRET")
    gpu = _CudaLike()
    assert use_triton(gpu) and not use_triton(gpu, faster_on_gpu=False)
    monkeypatch.setenv("FTPLUGINS_KERNELS", "all")
    assert use_triton(gpu, faster_on_gpu=False)
    monkeypatch.setenv("FTPLUGINS_KERNELS", "off")
    assert not use_triton(gpu)
    monkeypatch.setenv("FTPLUGINS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="auto .*all or off"):
        use_triton(gpu)
    monkeypatch.delenv("FTPLUGINS_KERNELS")
    asked = []
    monkeypatch.setattr(bottleneck_dispatcher, "use_triton", lambda *t, **kw: asked.append(kw) or False)
    bottleneck_dispatcher.bottleneck_adapter(**make_inputs((3,), 8, 2, 8, residual=False, biases=False,
                                                           scale="float"), activation="relu")
    assert asked == [{"faster_on_gpu": False}]  # the fused adapter lost to cuBLAS on an H200


@pytest.mark.parametrize("case", ["wide bottleneck", "2-d scale", "broadcast residual", "unknown activation"])
def test_calls_the_kernel_does_not_take_fall_back_to_the_reference(case):
    b = 300 if case == "wide bottleneck" else 8
    inputs = make_inputs((4,), 16, b, 16, residual=case == "broadcast residual", biases=False, scale="vector")
    if case == "2-d scale":
        inputs["scale"] = inputs["scale"].detach().reshape(1, 16)
    if case == "broadcast residual":
        inputs["residual"] = inputs["residual"].detach()[0]  # [d_out], broadcast over the rows by the reference
    activation = "softplus" if case == "unknown activation" else "relu"
    assert not bottleneck_triton.supports(activation=activation, **inputs)
    with pytest.raises(ValueError, match="unsupported call"):
        bottleneck_adapter_triton(activation=activation, **inputs)
    if case == "unknown activation":
        with pytest.raises(ValueError, match="activation 'softplus'"):  # the reference's own error
            bottleneck_adapter(activation=activation, **inputs)
        return
    out, _, node = grads_of(bottleneck_adapter, inputs, activation)
    assert type(node).__name__ != TRITON_NODE
    assert torch.equal(out, bottleneck_adapter_reference(activation=activation, **inputs))
