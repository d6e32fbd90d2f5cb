"""Bottleneck adapters (LLM-Adapters, PETL-AST): placements, identity at init, counts, merge, save/load,
quantized bases, a diffusers UNet, training through TRL."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import peft
import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_args
from torch import nn

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.testing import arithmetic_dataset, minilm_classifier, tiny_llama, tiny_tokenizer, tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = ".bottleneck_adapter."
PHI = {"tanh": torch.tanh, "gelu": F.gelu, "identity": lambda t: t}


# --- models and helpers --------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_ast(seed: int = 0):
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=16,
                       frequency_stride=16, time_stride=16, max_length=32, num_mel_bins=32, num_labels=3)
    torch.manual_seed(seed)
    return ASTForAudioClassification(config)


def _llama():
    return tiny_llama(seed=0).eval(), {"input_ids": torch.randint(5, 300, (2, 12), generator=_gen(1))}


def _vit():
    return tiny_vit(seed=0).eval(), {"pixel_values": torch.randn(2, 3, 16, 16, generator=_gen(2))}


def _ast():
    return tiny_ast(seed=0).eval(), {"input_values": torch.randn(2, 32, 32, generator=_gen(3))}


def _bert():
    torch.manual_seed(0)  # the fresh classification head
    ids = torch.randint(1000, 20000, (2, 10), generator=_gen(4))
    return minilm_classifier().eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


FACTORIES = {"llama": _llama, "vit": _vit, "ast": _ast, "bert": _bert}


_CACHE: dict = {}


def base(kind: str):
    """A fresh copy of a (cached) base model and its inputs."""
    if kind not in _CACHE:
        _CACHE[kind] = FACTORIES[kind]()
    model, inputs = _CACHE[kind]
    return copy.deepcopy(model), inputs


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def wrap(model, **options):
    return peft.get_peft_model(model, ftplugins.peft_config("bottleneck", **options))


def perturb(model, seed: int = 0, std: float = 0.1) -> None:
    """Move every adapter parameter away from its init."""
    gen = _gen(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ADAPTER in name:
                param.copy_(std * torch.randn(param.shape, generator=gen) + (1 if name.endswith(".scale") else 0))


def layers(model, cls_name: str) -> dict:
    return {name: module for name, module in model.named_modules() if type(module).__name__ == cls_name}


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def roles(model) -> dict:
    return model.peft_config["default"].layer_roles


# --- the plugin and its options ------------------------------------------------------------------


def test_plugin_and_options_modules_do_not_import_torch():
    code = ("import sys, ftplugins.methods.bottleneck as m, ftplugins.methods.bottleneck.options, "
            "ftplugins.methods.bottleneck.presets; assert 'torch' not in sys.modules; print(m.plugin)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "bottleneck" in out.stdout


@pytest.mark.parametrize(
    "options, match",
    [
        ({"bottleneck_preset": "bogus"}, "bottleneck_preset 'bogus'"),
        ({"bottleneck_activation": "sigmoid"}, "bottleneck_activation"),
        ({"bottleneck_init": "kaiming"}, "bottleneck_init"),
        ({"bottleneck_size": 0}, "bottleneck_size"),
        ({"bottleneck_dropout": 1.0}, "bottleneck_dropout"),
        ({"bottleneck_scaling": float("nan")}, "bottleneck_scaling"),
        ({"bottleneck_preset": "houlsby", "bottleneck_conformer_kernel_size": 4}, "odd"),
        ({"bottleneck_preset": "llama_series", "bottleneck_block_mode": "sequential"}, "only apply to the block"),
        ({"bottleneck_preset": "llama_parallel", "bottleneck_series_side": "input"}, "applies to series presets"),
        ({"bottleneck_preset": "pfeiffer", "bottleneck_target_modules": ["q_proj"]}, "only apply to the Linear"),
        ({"bottleneck_preset": "pfeiffer", "bottleneck_bias": True}, "only apply to the Linear"),
        ({"bottleneck_preset": "pfeiffer", "bottleneck_block_type": "conformer", "bottleneck_activation": "tanh"},
         "conformer"),
        ({"bottleneck_preset": "pfeiffer", "bottleneck_block_residual": False}, "applies to sequential"),
        ({"bottleneck_rank": 4}, "bottleneck_rank"),
    ],
)
def test_bad_options_are_option_errors(options, match):
    with pytest.raises(OptionError, match=match):
        ftplugins.peft_config("bottleneck", **options)


def test_the_peft_config_checks_its_values_too():
    from ftplugins.methods.bottleneck.config import BottleneckConfig

    with pytest.raises(ValueError, match="bottleneck_activation 'swish'"):
        BottleneckConfig(activation="swish")
    config = BottleneckConfig(preset="houlsby", block_type="conformer", learn_scaling=True)
    assert config.peft_type == "BOTTLENECK" and config.layer_roles is None and config.modules_to_save is None


def test_options_parse_from_the_command_line_and_reach_the_config():
    from transformers import HfArgumentParser

    from ftplugins.methods.bottleneck.options import BottleneckOptions

    argv = ["--bottleneck_preset", "llama_parallel", "--bottleneck_target_modules", "up_proj", "o_proj",
            "--bottleneck_size", "16", "--bottleneck_activation", "identity", "--bottleneck_learn_scaling", "true",
            "--bottleneck_scaling", "2.5", "--bottleneck_bias", "true", "--bottleneck_dropout", "0.1"]
    (opts,) = HfArgumentParser(BottleneckOptions).parse_args_into_dataclasses(argv)
    assert opts == BottleneckOptions(
        bottleneck_preset="llama_parallel", bottleneck_target_modules=["up_proj", "o_proj"], bottleneck_size=16,
        bottleneck_activation="identity", bottleneck_learn_scaling=True, bottleneck_scaling=2.5, bottleneck_bias=True,
        bottleneck_dropout=0.1,
    )
    config = ftplugins.peft_config("bottleneck", **{k: v for k, v in vars(opts).items()})
    assert type(config).__name__ == "BottleneckConfig" and config.peft_type == "BOTTLENECK"
    assert (config.preset, config.target_modules, config.bottleneck_size, config.activation) == (
        "llama_parallel", ["up_proj", "o_proj"], 16, "identity")
    assert (config.learn_scaling, config.scaling, config.adapter_bias, config.dropout) == (True, 2.5, True, 0.1)
    assert config.target_modules is not opts.bottleneck_target_modules  # the options are not filled in place
    # --bottleneck_init is PEFT's init_weights in the config: identity = True, bert (random) = False.
    inits = {name: ftplugins.peft_config("bottleneck", bottleneck_init=name).init_weights
             for name in ("identity", "bert", "petl_zero")}
    assert inits == {"identity": True, "bert": False, "petl_zero": "petl_zero"}


# --- presets and placements ----------------------------------------------------------------------


def _placements(model) -> dict[str, str]:
    first = {name: role for name, role in roles(model).items() if "layers.0." in name}
    return {name.split("layers.0.")[-1]: role["placement"] for name, role in first.items()}


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, {"mlp.gate_proj": "series_input", "mlp.up_proj": "series_input", "mlp.down_proj": "series_output"}),
        ({"bottleneck_preset": "llm_adapters_parallel"},
         {"self_attn.q_proj": "parallel", "self_attn.k_proj": "parallel", "self_attn.v_proj": "parallel"}),
        ({"bottleneck_preset": "llm_adapters_adapterp"}, {"mlp.down_proj": "series_output"}),
        ({"bottleneck_preset": "llama_series"}, {"mlp.gate_proj": "series_input", "mlp.up_proj": "series_input"}),
        ({"bottleneck_preset": "llama_parallel"}, {"mlp.up_proj": "parallel", "mlp.down_proj": "parallel"}),
        ({"bottleneck_preset": "llama_parallel", "bottleneck_target_modules": ["o_proj"]},
         {"self_attn.o_proj": "parallel"}),
        ({"bottleneck_preset": "llama_series", "bottleneck_target_modules": ["o_proj", "up_proj"],
          "bottleneck_series_side": "output"}, {"self_attn.o_proj": "series_output", "mlp.up_proj": "series_output"}),
    ],
)
def test_presets_place_the_papers_recipes(options, expected):
    model, _ = base("llama")
    wrapped = wrap(model, bottleneck_size=4, **options)
    assert _placements(wrapped) == expected
    assert len(roles(wrapped)) == 2 * len(expected)  # both layers of the tiny Llama
    linear = layers(wrapped, "BottleneckLinear")
    assert sorted(linear) == sorted(f"base_model.model.{name}" for name in roles(wrapped))
    assert {next(iter(m.placement.values())) for m in linear.values()} == set(expected.values())


def test_a_series_side_the_tables_do_not_know_must_be_given():
    model, _ = base("llama")
    with pytest.raises(OptionError, match=r"o_proj.*LlamaForCausalLM \(model_type llama\).*--bottleneck_series_side"):
        wrap(model, bottleneck_preset="llama_series", bottleneck_target_modules=["o_proj"])


def test_exclude_modules_leaves_linear_modules_and_whole_block_sublayers_out():
    model, _ = base("llama")
    wrapped = wrap(model, bottleneck_size=4, bottleneck_exclude_modules=["model.layers.0.mlp.up_proj"])
    assert "model.layers.0.mlp.up_proj" not in roles(wrapped) and "model.layers.1.mlp.up_proj" in roles(wrapped)
    # Parallel-before on post-LN BERT wraps the attention's entry and exit; excluding either drops both.
    model, _ = base("bert")
    wrapped = wrap(model, bottleneck_preset="houlsby", bottleneck_size=4,
                   bottleneck_exclude_modules=["bert.encoder.layer.0.attention.self"])
    left = {name for name in roles(wrapped) if name.startswith("bert.encoder.layer.0.")}
    assert left == {"bert.encoder.layer.0.intermediate", "bert.encoder.layer.0.output.dense"}


@pytest.mark.parametrize("mode, position", [("parallel", "before"), ("sequential", "after"),
                                            ("sequential", "before"), ("parallel", "after")])
def test_block_presets_wrap_the_sublayers_a_placement_needs(mode, position):
    model, _ = base("bert")
    wrapped = wrap(model, bottleneck_preset="houlsby", bottleneck_size=4, bottleneck_block_mode=mode,
                   bottleneck_block_position=position)
    found = {name.removeprefix("bert.encoder.layer.0."): role["part"]
             for name, role in roles(wrapped).items() if name.startswith("bert.encoder.layer.0.")}
    # Post-LN BERT: a sublayer runs from its entry (attention.self / intermediate) to its exit (the dense
    # before the residual add); parallel-before needs both, sequential-before the entry, "after" the exit.
    expected = {
        ("parallel", "before"): {"attention.self": "entry", "attention.output.dense": "exit",
                                 "intermediate": "entry", "output.dense": "exit"},
        ("sequential", "before"): {"attention.self": "entry", "intermediate": "entry"},
    }.get((mode, position), {"attention.output.dense": "exit", "output.dense": "exit"})
    assert found == expected
    assert len(roles(wrapped)) == 6 * len(expected)


# --- the maths of each placement -----------------------------------------------------------------


def _f(adapter, z):
    """f(z) = s·(U·φ(D·z + d) + u), from the adapter's parameters, in fp32."""
    h = z @ adapter.down.T + (0 if adapter.down_bias is None else adapter.down_bias)
    out = PHI[adapter.activation](h) @ adapter.up.T + (0 if adapter.up_bias is None else adapter.up_bias)
    return adapter.scale * out


@pytest.mark.parametrize("placement", ["series_input", "series_output", "parallel"])
def test_linear_placements_compute_the_papers_formulas(placement):
    from ftplugins.methods.bottleneck.config import BottleneckConfig
    from ftplugins.methods.bottleneck.layer import BottleneckLinear

    torch.manual_seed(0)
    linear = nn.Linear(6, 10)
    config = BottleneckConfig(preset="llama_series", bottleneck_size=3, adapter_bias=True, scaling=0.5)
    layer = BottleneckLinear(linear, "default", config, placement)
    perturb(nn.ModuleDict({"x": layer}))  # the names must contain ".bottleneck_adapter."
    adapter, x = layer.bottleneck_adapter["default"], torch.randn(4, 6, generator=_gen(5))
    with torch.no_grad():
        expected = {
            "series_input": lambda: linear(x + _f(adapter, x)),
            "series_output": lambda: linear(x) + _f(adapter, linear(x)),
            "parallel": lambda: linear(x) + _f(adapter, x),
        }[placement]()
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert adapter.down.shape == (3, 10 if placement == "series_output" else 6)
    assert adapter.up.shape == (6 if placement == "series_input" else 10, 3)


@pytest.mark.parametrize("mode, position, residual", [
    ("parallel", "before", True), ("parallel", "after", True), ("sequential", "after", True),
    ("sequential", "after", False), ("sequential", "before", True), ("sequential", "before", False),
])
def test_block_placements_compute_their_formulas_on_a_vit_block(mode, position, residual):
    model, inputs = base("vit")
    wrapped = wrap(model, bottleneck_preset="pfeiffer", bottleneck_size=4, bottleneck_block_mode=mode,
                   bottleneck_block_position=position, bottleneck_block_residual=residual)
    perturb(wrapped)
    block = wrapped.base_model.model.vit.layers[0]
    mlp, adapter = block.mlp.base_layer, block.mlp.bottleneck_adapter["default"]
    h = torch.randn(2, 5, 32, generator=_gen(6))
    with torch.no_grad():
        h1 = h + block.attention(block.layernorm_before(h))[0]
        u = block.layernorm_after(h1)
        ffn = {
            ("parallel", "before"): lambda: mlp(u) + _f(adapter, u),
            ("parallel", "after"): lambda: mlp(u) + _f(adapter, mlp(u)),
            ("sequential", "after"): lambda: (mlp(u) if residual else 0) + _f(adapter, mlp(u)),
            ("sequential", "before"): lambda: mlp((u if residual else 0) + _f(adapter, u)),
        }[(mode, position)]()
        torch.testing.assert_close(block(h), h1 + ffn, rtol=1e-5, atol=1e-5)


def test_parallel_before_on_post_ln_bert_reads_the_sublayer_input_through_the_tap():
    model, _ = base("bert")
    wrapped = wrap(model, bottleneck_preset="pfeiffer", bottleneck_size=4)
    perturb(wrapped)
    block = wrapped.base_model.model.bert.encoder.layer[0]
    assert block.intermediate.bottleneck_adapter.keys() == set()  # the entry only taps u
    adapter = block.output.dense.bottleneck_adapter["default"]
    u = torch.randn(2, 7, 384, generator=_gen(7))
    with torch.no_grad():
        out = block.output
        y = out.dense.base_layer(block.intermediate.base_layer(u))
        expected = out.LayerNorm(y + _f(adapter, u) + u)
        got = block.output(block.intermediate(u), u)
        assert block.output.dense.taps["default"].values == {}  # taken, not kept alive
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- identity at init and disabled adapters ------------------------------------------------------

LINEAR_CASES = [("llama", {"bottleneck_preset": p}) for p in
                ("llm_adapters_series", "llm_adapters_parallel", "llm_adapters_adapterp", "llama_series",
                 "llama_parallel")]
LINEAR_CASES.append(("llama", {"bottleneck_bias": True, "bottleneck_learn_scaling": True, "bottleneck_dropout": 0.1}))
BLOCK_CASES = [
    (kind, {"bottleneck_preset": "houlsby", "bottleneck_block_mode": mode, "bottleneck_block_position": position})
    for kind in ("vit", "ast", "bert", "llama")
    for mode, position in (("parallel", "before"), ("parallel", "after"), ("sequential", "before"),
                           ("sequential", "after"))
] + [(kind, {"bottleneck_preset": "pfeiffer", "bottleneck_block_type": "conformer"}) for kind in ("vit", "ast", "bert")]


def _case_id(case) -> str:
    kind, options = case
    return kind + "-" + "-".join(str(v) for v in options.values())


@pytest.mark.parametrize("case", LINEAR_CASES + BLOCK_CASES, ids=_case_id)
def test_identity_at_init_is_exact_and_the_adapters_are_live(case):
    kind, options = case
    model, inputs = base(kind)
    reference = logits(model, inputs)
    wrapped = wrap(model, bottleneck_size=4, **options)
    adapters = [m for n, m in wrapped.named_modules() if n.endswith(".bottleneck_adapter.default")]
    assert adapters and not any(m.training for a in adapters for m in a.modules())  # eval, like the wrapped model
    assert torch.equal(logits(wrapped, inputs), reference)
    perturb(wrapped)
    assert not torch.allclose(logits(wrapped, inputs), reference, atol=1e-4)


def test_sequential_without_residual_drops_the_sublayer_at_init():
    model, inputs = base("vit")
    sequential = {"bottleneck_preset": "pfeiffer", "bottleneck_block_mode": "sequential", "bottleneck_size": 4}
    with_skip = wrap(copy.deepcopy(model), **sequential)
    without_skip = wrap(copy.deepcopy(model), bottleneck_block_residual=False, **sequential)
    no_ffn = copy.deepcopy(model)
    for block in no_ffn.vit.layers:  # the FFN's output zeroed: what PETL-AST's apply_residual=False starts from
        nn.init.zeros_(block.mlp.fc2.weight)
        nn.init.zeros_(block.mlp.fc2.bias)
    assert torch.equal(logits(with_skip, inputs), logits(model, inputs))
    assert not torch.allclose(logits(without_skip, inputs), logits(model, inputs), atol=1e-3)
    assert torch.equal(logits(without_skip, inputs), logits(no_ffn, inputs))


@pytest.mark.parametrize("kind, options", [
    ("llama", {}), ("llama", {"bottleneck_preset": "llama_parallel"}),
    ("bert", {"bottleneck_preset": "houlsby"}), ("ast", {"bottleneck_preset": "pfeiffer",
                                                        "bottleneck_block_type": "conformer"}),
])
def test_disabled_adapter_gives_the_base_output(kind, options):
    model, inputs = base(kind)
    reference = logits(model, inputs)
    wrapped = wrap(model, bottleneck_size=4, **options)
    perturb(wrapped)
    adapted = logits(wrapped, inputs)
    with wrapped.disable_adapter():
        assert torch.equal(logits(wrapped, inputs), reference)
    assert torch.equal(logits(wrapped, inputs), adapted)


def test_bf16_base_keeps_fp32_adapters_and_its_dtype():
    model, inputs = base("llama")
    model = model.to(torch.bfloat16)
    reference = logits(model, inputs)
    wrapped = wrap(model, bottleneck_size=4, bottleneck_learn_scaling=True)
    assert {p.dtype for n, p in wrapped.named_parameters() if ADAPTER in n} == {torch.float32}
    out = logits(wrapped, inputs)
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference)

    # The layer itself keeps its adapter in fp32 (not only PEFT's autocast in get_peft_model, which
    # diffusers' add_adapter or inject_adapter_in_model may skip).
    from ftplugins.methods.bottleneck.config import BottleneckConfig
    from ftplugins.methods.bottleneck.layer import BottleneckLinear

    layer = BottleneckLinear(nn.Linear(8, 8).to(torch.bfloat16), "default", BottleneckConfig(), "parallel")
    assert {p.dtype for p in layer.bottleneck_adapter.parameters()} == {torch.float32}
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_the_adapter_maths_goes_through_one_function(monkeypatch):
    from ftplugins.kernels import bottleneck as dispatcher

    calls = []
    real = dispatcher.bottleneck_adapter

    def spy(x, down_weight, up_weight, scale, activation, residual=None, down_bias=None, up_bias=None):
        calls.append((activation, down_bias is not None))
        return real(x, down_weight, up_weight, scale, activation, residual, down_bias, up_bias)

    monkeypatch.setattr(dispatcher, "bottleneck_adapter", spy)
    model, inputs = base("llama")
    logits(wrap(model, bottleneck_size=4), inputs)
    assert calls == [("tanh", False)] * 6  # gate, up, down in both layers
    calls.clear()
    model, inputs = base("vit")
    logits(wrap(model, bottleneck_preset="houlsby", bottleneck_size=4), inputs)
    assert calls == [("gelu", True)] * 4  # the PETL-AST bottleneck block: Linear-GELU-Linear with biases


# --- parameter counts and inits ------------------------------------------------------------------


def _linears(model, suffixes):
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(suffixes)]


def _numel(model, names) -> int:
    return sum(p.numel() for name in names for p in model.get_submodule(name).parameters())


def test_trainable_count_of_linear_adapters():
    model, _ = base("llama")
    b = 8
    # series: gate/up map their input (d_in -> b -> d_in), down its output (d_out -> b -> d_out)
    expected = sum(b * 2 * m.in_features for m in _linears(model, ("gate_proj", "up_proj")))
    expected += sum(b * 2 * m.out_features for m in _linears(model, ("down_proj",)))
    wrapped = wrap(copy.deepcopy(model), bottleneck_size=b)
    assert trainable(wrapped) == expected

    # parallel d_in -> b -> d_out with b = round(d_in / 4), biases (b + d_out) and a learned scale (1)
    expected = sum(round(m.in_features / 4) * (m.in_features + m.out_features + 1) + m.out_features + 1
                   for m in _linears(model, ("up_proj", "down_proj")))
    wrapped = wrap(copy.deepcopy(model), bottleneck_preset="llama_parallel", bottleneck_reduction_factor=4,
                   bottleneck_bias=True, bottleneck_learn_scaling=True, bottleneck_scaling=2.0)
    assert trainable(wrapped) == expected
    scales = [p for n, p in wrapped.named_parameters() if n.endswith(".scale")]
    assert len(scales) == 4 and all(torch.equal(s, torch.tensor([2.0])) for s in scales)


@pytest.mark.parametrize("kind", ["vit", "ast"])
def test_trainable_count_of_houlsby_blocks_with_norms_and_head(kind):
    model, _ = base(kind)
    d, b = model.config.hidden_size, 4
    backbone = "vit" if kind == "vit" else "audio_spectrogram_transformer"
    n = model.config.num_hidden_layers
    norms = [f"{backbone}.layers.{i}.{ln}" for i in range(n) for ln in ("layernorm_before", "layernorm_after")]
    saved = ["classifier", *norms, f"{backbone}.layernorm"]
    expected = n * 2 * (b * 2 * d + b + d) + _numel(model, saved)
    wrapped = wrap(model, bottleneck_preset="houlsby", bottleneck_size=b)
    assert trainable(wrapped) == expected
    assert sorted(wrapped.peft_config["default"].modules_to_save) == sorted(saved)


def test_trainable_count_of_pfeiffer_conformer_on_bert():
    model, _ = base("bert")
    d, b, k, n = 384, 4, 31, 6
    conformer = (d * 2 * b + 2 * b) + (b * k + b) + 2 * b + (b * d + d)  # pointwise, depthwise, BatchNorm, pointwise
    saved = ["classifier"] + [f"bert.encoder.layer.{i}.output.LayerNorm" for i in range(n)]  # post-LN: no final LN
    expected = n * conformer + _numel(model, saved)
    wrapped = wrap(model, bottleneck_preset="pfeiffer", bottleneck_block_type="conformer", bottleneck_size=b)
    assert trainable(wrapped) == expected
    assert sorted(wrapped.peft_config["default"].modules_to_save) == sorted(saved)
    model, _ = base("bert")
    expected = n * (2 * b * d + b + d) + _numel(model, ["classifier"])
    wrapped = wrap(model, bottleneck_preset="pfeiffer", bottleneck_size=b, bottleneck_train_norms=False)
    assert trainable(wrapped) == expected


def test_reproduction_inits_are_the_papers():
    model, inputs = base("llama")
    reference = logits(model, inputs)
    torch.manual_seed(0)
    bert = wrap(model, bottleneck_size=64, bottleneck_init="bert")
    weights = torch.cat([p.detach().flatten() for n, p in bert.named_parameters() if ADAPTER in n])
    assert 0.015 < weights.std() < 0.025 and abs(weights.mean()) < 0.005
    assert not torch.equal(logits(bert, inputs), reference)  # LLM-Adapters' default moves the outputs at step 0

    model, inputs = base("vit")
    zero = wrap(model, bottleneck_preset="pfeiffer", bottleneck_size=4, bottleneck_init="petl_zero")
    params = {n: p for n, p in zero.named_parameters() if ADAPTER in n}
    assert all(torch.count_nonzero(p) == 0 for p in params.values())
    zero(**inputs).logits.sum().backward()
    # PETL-AST's all-zero bottleneck block: only the up-bias ever gets a gradient.
    with_grad = sorted({n.rsplit(".", 1)[-1] for n, p in params.items() if torch.count_nonzero(p.grad)})
    assert with_grad == ["up_bias"]


# --- merge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, options", [
    ("llama", {"bottleneck_preset": "llama_parallel", "bottleneck_learn_scaling": True}),
    ("vit", {"bottleneck_preset": "llm_adapters_parallel", "bottleneck_target_modules": ["q_proj", "v_proj", "fc2"],
             "bottleneck_bias": True}),
])
def test_parallel_identity_adapter_merges_exactly(kind, options):
    model, inputs = base(kind)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = logits(model, inputs)
    wrapped = wrap(model, bottleneck_size=4, bottleneck_activation="identity", **options)
    perturb(wrapped)
    unmerged = logits(wrapped, inputs)
    assert not torch.allclose(unmerged, reference, atol=1e-3)

    wrapped.merge_adapter()
    assert (logits(wrapped, inputs) - unmerged).abs().max() <= 1e-5
    wrapped.unmerge_adapter()
    assert (logits(wrapped, inputs) - unmerged).abs().max() <= 1e-5

    merged = wrapped.merge_and_unload()
    assert (logits(merged, inputs) - unmerged).abs().max() <= 1e-5
    state = merged.state_dict()
    heads = ("classifier.",)  # a ViT's head trains in full (modules_to_save) and comes back as a plain Linear
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base_state.items()}
    changed = [k for k, v in base_state.items() if not torch.equal(state[k], v) and not k.startswith(heads)]
    assert changed and all(k.endswith(("up_proj.weight", "down_proj.weight", "q_proj.weight", "v_proj.weight",
                                       "fc2.weight", "q_proj.bias", "v_proj.bias", "fc2.bias")) for k in changed)


@pytest.mark.parametrize("kind, options, reason", [
    ("llama", {"bottleneck_preset": "llama_parallel"}, r"non-linear activation 'tanh'"),
    ("llama", {"bottleneck_preset": "llama_series", "bottleneck_activation": "identity"}, "series_input placement"),
    ("llama", {"bottleneck_preset": "llm_adapters_adapterp", "bottleneck_activation": "identity"},
     "series_output placement"),
    ("llama", {"bottleneck_preset": "llama_parallel", "bottleneck_activation": "identity", "bottleneck_bias": True},
     "adapter biases on a base layer without bias"),
    ("vit", {"bottleneck_preset": "houlsby", "bottleneck_activation": "identity"},
     r"parallel block adapter around the mhsa sublayer"),
])
def test_other_adapters_refuse_to_merge_and_leave_the_model_unchanged(kind, options, reason):
    model, inputs = base(kind)
    wrapped = wrap(model, bottleneck_size=4, **options)
    perturb(wrapped)
    before = logits(wrapped, inputs)
    with pytest.raises(FtpluginsError, match=reason):
        wrapped.merge_and_unload()
    with pytest.raises(FtpluginsError, match=reason):
        wrapped.merge_adapter()
    assert torch.equal(logits(wrapped, inputs), before)


# --- save and load -------------------------------------------------------------------------------


@pytest.mark.slow
def test_save_then_load_in_a_fresh_process_is_bitwise_identical(tmp_path):
    model, inputs = base("llama")
    wrapped = wrap(model, bottleneck_size=4, bottleneck_bias=True, bottleneck_learn_scaling=True)
    perturb(wrapped)
    adapter = tmp_path / "adapter"
    wrapped.save_pretrained(str(adapter))
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK"
    assert saved["layer_roles"]["model.layers.1.mlp.down_proj"] == {"placement": "series_output"}
    torch.save(inputs["input_ids"], tmp_path / "ids.pt")

    child = os.path.join(HERE, "bottleneck_load_child.py")
    args = [sys.executable, child, str(adapter), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(wrapped, inputs))


@pytest.mark.parametrize("kind, options", [
    ("ast", {"bottleneck_preset": "houlsby", "bottleneck_block_type": "conformer", "bottleneck_learn_scaling": True}),
    ("bert", {"bottleneck_preset": "houlsby"}),
])
def test_load_adapter_restores_block_adapters_norms_head_and_batchnorm_stats(kind, options, tmp_path):
    model, inputs = base(kind)
    wrapped = wrap(model, bottleneck_size=4, **options)
    perturb(wrapped)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if ".modules_to_save." in name:  # the trained copies of the LayerNorms and the head
                param.mul_(1.5)
        wrapped.train()(**inputs)  # moves the conformers' BatchNorm running statistics
    wrapped.eval()
    expected = logits(wrapped, inputs)
    wrapped.save_pretrained(str(tmp_path / "adapter"))
    fresh, _ = base(kind)
    loaded = ftplugins.load_adapter(fresh, str(tmp_path / "adapter"), adapter_name="other")
    assert torch.equal(logits(loaded.eval(), inputs), expected)


# --- quantized bases, a diffusion UNet -----------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("preset", ["llm_adapters_series", "llama_parallel"])
def test_quantized_base_forward_and_backward(bits, preset, quantizable_model_dir):
    options = {"bottleneck_activation": "identity"} if preset == "llama_parallel" else {}
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ftplugins.quantized_cpu import guard_cpu_4bit_packing

    # transformers quantizes a saved tiny Llama on the CPU with bitsandbytes (offline), as it would a real model;
    # realistic widths, so that on a CPU with AVX512-BF16 eval mode takes bitsandbytes' packed 4-bit kernel.
    quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
             if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    model = AutoModelForCausalLM.from_pretrained(quantizable_model_dir, quantization_config=quant,
                                                 device_map="cpu")
    _, inputs = base("llama")
    # The base's eval logits on bitsandbytes' generic path (the one an adapted model takes on every CPU), from a copy.
    base_copy = AutoModelForCausalLM.from_pretrained(quantizable_model_dir, quantization_config=quant, device_map="cpu")
    guard_cpu_4bit_packing(base_copy, training=True)
    reference = logits(base_copy.eval(), inputs)
    wrapped = wrap(model, bottleneck_preset=preset, bottleneck_size=4, **options)
    wrapped_bases = [m.get_base_layer() for m in layers(wrapped, "BottleneckLinear").values()]
    assert wrapped_bases and all(isinstance(m, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)
                                 for m in wrapped_bases)
    # Eval without gradients: the path that repacks 4-bit weights on AVX512-BF16 CPUs; after it, gradients must
    # still reach every adapter (below).
    assert torch.equal(logits(wrapped.eval(), inputs), reference)

    perturb(wrapped)
    wrapped.train()
    wrapped(**inputs, labels=inputs["input_ids"]).loss.backward()
    adapter = {n: p for n, p in wrapped.named_parameters() if ADAPTER in n}
    assert adapter and all(p.requires_grad and torch.count_nonzero(p.grad) for p in adapter.values())
    frozen = [p for n, p in wrapped.named_parameters() if ADAPTER not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    if preset == "llama_parallel":  # mergeable maths, but not into 4-/8-bit weights
        with pytest.raises(FtpluginsError, match="quantized base layer"):
            wrapped.merge_and_unload()


@pytest.mark.slow
def test_diffusers_unet_attention_projections_train():
    from diffusers import UNet2DConditionModel

    from ftplugins.methods.bottleneck.config import BottleneckConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8, norm_num_groups=8,
    )
    gen = _gen(8)
    sample, hidden = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 32, generator=gen)
    timesteps, target = torch.tensor([3, 7]), torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        reference = unet(sample, timesteps, encoder_hidden_states=hidden).sample
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    projections = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear)
                   and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]

    config = ftplugins.peft_config("bottleneck", bottleneck_preset="llm_adapters_parallel", bottleneck_size=4,
                                   bottleneck_target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    assert isinstance(config, BottleneckConfig)
    unet.add_adapter(config)  # diffusers' PEFT integration injects our tuner like any PEFT type
    assert sorted(layers(unet, "BottleneckLinear")) == sorted(projections)  # self- and cross-attention, every block
    with torch.no_grad():
        assert torch.equal(unet(sample, timesteps, encoder_hidden_states=hidden).sample, reference)

    trained = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert trained and all(ADAPTER in n for n in trained)
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-2)
    loss = F.mse_loss(unet(sample, timesteps, encoder_hidden_states=hidden).sample, target)
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(trained[n], before[n]) for n in before if n.endswith(".up"))
    after = {k: v for k, v in unet.state_dict().items() if ADAPTER not in k}
    for key, value in base_state.items():  # every base weight, at its wrapped name
        wrapped_key = key if key in after else key.rsplit(".", 1)[0] + ".base_layer." + key.rsplit(".", 1)[1]
        assert torch.equal(after[wrapped_key], value), key


# --- errors --------------------------------------------------------------------------------------


def test_unsupported_models_are_named_with_what_was_looked_for():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel \(model_type gpt2\).*ViTLayer.*BertLayer"):
        wrap(gpt2, bottleneck_preset="pfeiffer")
    model, _ = base("vit")
    with pytest.raises(UnsupportedModelError, match=r"llm_adapters_series .*ViTForImageClassification \(model_type "
                                                     r"vit\).*llama.*--bottleneck_target_modules"):
        wrap(model)
    model, _ = base("llama")
    with pytest.raises(UnsupportedModelError, match=r"no module of LlamaForCausalLM .*'no_such_module'"):
        wrap(model, bottleneck_target_modules=["no_such_module"], bottleneck_series_side="input")
    with pytest.raises(UnsupportedModelError, match=r"not Linear: model.embed_tokens \(Embedding\)"):
        wrap(model, bottleneck_target_modules=["embed_tokens"], bottleneck_series_side="input")


# --- through TRL ---------------------------------------------------------------------------------


def test_trains_through_compose_and_leaves_the_base_bitwise_unchanged(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = ftplugins.compose(SFTTrainer, ["bottleneck"], bottleneck_preset="llama_series", bottleneck_size=8)
    args = cpu_args(SFTConfig, tmp_path, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2)
    trainer = cls(model=model, args=args, train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer())
    trainer.train()

    wrapped = trainer.model
    assert isinstance(wrapped, peft.PeftModel) and wrapped.peft_config["default"].peft_type == "BOTTLENECK"
    trained = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trained and all(ADAPTER in n for n in trained)
    ups = torch.cat([p.detach().flatten() for n, p in trained.items() if n.endswith(".up")])
    assert torch.count_nonzero(ups) > 0  # moved away from the zero init
    after = wrapped.unload().state_dict()
    assert after.keys() == base_state.keys()
    assert all(torch.equal(after[k], v) for k, v in base_state.items())


def test_trainable_count_of_houlsby_blocks_on_a_decoder():
    """Pre-norm decoder blocks (Llama): adapters after attention and MLP, their RMSNorms and the final norm."""
    model, _ = base("llama")
    d, b, n = model.config.hidden_size, 4, model.config.num_hidden_layers
    norms = [f"model.layers.{i}.{norm}" for i in range(n) for norm in ("input_layernorm", "post_attention_layernorm")]
    saved = [*norms, "model.norm"]
    wrapped = wrap(model, bottleneck_preset="houlsby", bottleneck_size=b)
    assert trainable(wrapped) == n * 2 * (b * 2 * d + b + d) + (2 * n + 1) * d  # RMSNorms: one weight of d each
    assert sorted(wrapped.peft_config["default"].modules_to_save) == sorted(saved)
