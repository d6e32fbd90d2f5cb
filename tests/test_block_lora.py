"""Block-LoRA: parameter count, chunk-sum forward = dense block update, identical column blocks, identity at
init, disable, merge/unmerge, indivisible d_in, save/load in a fresh process, TRL, bitsandbytes, diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import peft
import pytest
import torch
from conftest import cpu_args
from torch import nn

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.testing import arithmetic_dataset, save_tiny_llama, tiny_llama, tiny_tokenizer, tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))
QKV = {"q_proj", "k_proj", "v_proj", "query", "key", "value", "to_q", "to_k", "to_v"}


# --- helpers -------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def llama():
    return tiny_llama(seed=0).eval(), {"input_ids": torch.randint(5, 300, (2, 12), generator=_gen(1))}


def vit():
    return tiny_vit(seed=0).eval(), {"pixel_values": torch.randn(2, 3, 16, 16, generator=_gen(3))}


MODELS = {"llama": llama, "vit": vit}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def wrap(model, **options):
    return peft.get_peft_model(model, ftplugins.peft_config("block_lora", **options))


def block_layers(model) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if type(module).__name__ == "BlockLoraLayer"}


def perturb(model, seed: int = 0) -> None:
    """Move B (zero at init) and A* away from their initial values."""
    gen = _gen(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".block_lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dense_update(layer, config) -> torch.Tensor:
    """ΔW = (alpha/r)·B·[A*, ..., A*], built here from the parameters and the config, not by the layer."""
    shared_a, b = layer.block_lora_A["default"].detach(), layer.block_lora_B["default"].detach()
    assert shared_a.shape == (config.r, layer.get_base_layer().in_features // config.num_blocks)
    assert b.shape == (layer.get_base_layer().out_features, config.r)
    return config.alpha / config.r * b @ torch.cat([shared_a] * config.num_blocks, dim=1)


# --- the plugin and its options ------------------------------------------------------------------


def test_plugin_module_does_not_import_torch():
    code = "import sys, ftplugins.methods.block_lora as m; assert 'torch' not in sys.modules; print(m.plugin)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "block_lora" in out.stdout


@pytest.mark.parametrize(
    "option, value",
    [("block_lora_n", 0), ("block_lora_n", 2.5), ("block_lora_r", 0), ("block_lora_alpha", 0.0),
     ("block_lora_dropout", 1.0), ("block_lora_dropout", -0.1)],
)
def test_bad_option_is_an_option_error(option, value):
    with pytest.raises(OptionError, match=option):
        ftplugins.peft_config("block_lora", **{option: value})


def test_unknown_option_is_an_option_error():
    with pytest.raises(OptionError, match="block_lora_rank.*did you mean block_lora_r"):
        ftplugins.peft_config("block_lora", block_lora_rank=4)


def test_options_parse_from_the_command_line():
    from transformers import HfArgumentParser

    from ftplugins.methods.block_lora.options import BlockLoraOptions

    (opts,) = HfArgumentParser(BlockLoraOptions).parse_args_into_dataclasses(
        ["--block_lora_n", "4", "--block_lora_r", "3", "--block_lora_alpha", "6", "--block_lora_dropout", "0",
         "--block_lora_target_modules", "all-linear"]
    )
    assert opts == BlockLoraOptions(block_lora_n=4, block_lora_r=3, block_lora_alpha=6.0, block_lora_dropout=0.0,
                                    block_lora_target_modules=["all-linear"])


def test_peft_config_carries_the_options():
    config = ftplugins.peft_config("block_lora", block_lora_n=4, block_lora_r=3, block_lora_alpha=6.0,
                                   block_lora_dropout=0.1, block_lora_target_modules=["q_proj"])
    assert type(config).__name__ == "BlockLoraConfig" and config.peft_type == "BLOCK_LORA"
    assert (config.num_blocks, config.r, config.alpha, config.dropout) == (4, 3, 6.0, 0.1)
    assert config.target_modules == ["q_proj"] and config.modules_to_save is None
    assert config.trainable_token_indices is None
    defaults = ftplugins.peft_config("block_lora")
    assert (defaults.num_blocks, defaults.r, defaults.alpha, defaults.dropout) == (8, 2, 2.0, 0.25)
    # alpha follows the rank unless given: the update scale alpha / r stays 1 (PEFT LoraConfig's default)
    assert ftplugins.peft_config("block_lora", block_lora_r=8).alpha == 8.0
    from ftplugins.methods.block_lora.config import BlockLoraConfig

    assert BlockLoraConfig(r=3).alpha == 3.0 and BlockLoraConfig(r=3, alpha=1.0).alpha == 1.0
    assert ftplugins.peft_config("block_lora", block_lora_target_modules=["all-linear"]).target_modules == "all-linear"


# --- the adapter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, n, r", [("llama", 8, 2), ("llama", 4, 3), ("vit", 8, 2)])
def test_trainable_count_is_r_dout_plus_r_din_over_n(kind, n, r):
    model, _ = MODELS[kind]()
    expected = sum(
        r * m.out_features + r * m.in_features // n
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in QKV
    )
    heads = [name for name in ("classifier",) if kind == "vit"]
    expected += sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    wrapped = wrap(model, block_lora_n=n, block_lora_r=r)
    assert trainable(wrapped) == expected
    assert wrapped.peft_config["default"].modules_to_save == heads
    assert len(block_layers(wrapped)) == 6  # q, k, v in each of the two layers


def test_all_linear_adapts_every_linear_layer_but_the_head():
    model, _ = llama()
    expected = sum(
        2 * m.out_features + 2 * m.in_features // 8
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name != "lm_head"
    )
    wrapped = wrap(model, block_lora_target_modules=["all-linear"])
    assert trainable(wrapped) == expected
    assert len(block_layers(wrapped)) == 14 and not any(n.endswith("lm_head") for n in block_layers(wrapped))


@pytest.mark.parametrize("n", [1, 4, 8])
def test_chunk_sum_forward_equals_the_dense_block_update(n):
    """In float64, so the bound measures the algebra (Σ_j x_j trick = dense ΔW) rather than fp32 rounding."""
    model, _ = llama()
    wrapped = wrap(model, block_lora_n=n, block_lora_r=3, block_lora_alpha=2.0,
                   block_lora_target_modules=["all-linear"])
    config = wrapped.peft_config["default"]
    perturb(wrapped)
    wrapped.double()
    for name, layer in block_layers(wrapped).items():
        base = layer.get_base_layer()
        x = torch.randn(2, 5, base.in_features, generator=_gen(7), dtype=torch.float64)
        with torch.no_grad():
            expected = base(x) + x @ dense_update(layer, config).T
            got = layer(x)
        assert (got - expected).abs().max() <= 1e-10, name
        torch.testing.assert_close(layer.delta_weight("default").double(), dense_update(layer, config))


def test_the_column_blocks_of_the_update_are_identical():
    """Probe the layer's forward with unit vectors: ΔW's n column blocks (input chunks) must be equal."""
    model, _ = llama()
    wrapped = wrap(model, block_lora_n=4, block_lora_target_modules=["all-linear"])
    perturb(wrapped)
    for name, layer in block_layers(wrapped).items():
        base = layer.get_base_layer()
        eye = torch.eye(base.in_features)
        with torch.no_grad():
            base.weight.zero_()  # so the layer's output is exactly its update: layer(e_i) = ΔW e_i
            update = layer(eye).T
        blocks = update.chunk(4, dim=1)
        assert update.abs().max() > 0
        assert all(torch.equal(block, blocks[0]) for block in blocks[1:]), name


@pytest.mark.parametrize("kind", MODELS)
def test_zero_b_gives_the_base_output_exactly(kind):
    model, inputs = MODELS[kind]()
    base = logits(model, inputs)
    wrapped = wrap(model, block_lora_target_modules=["all-linear"])
    assert all(torch.equal(layer.block_lora_B["default"], torch.zeros_like(layer.block_lora_B["default"]))
               for layer in block_layers(wrapped).values())
    assert all(layer.block_lora_A["default"].abs().sum() > 0 for layer in block_layers(wrapped).values())
    assert torch.equal(logits(wrapped, inputs), base)


@pytest.mark.parametrize("kind", MODELS)
def test_disabled_adapter_gives_the_base_output(kind):
    model, inputs = MODELS[kind]()
    base = logits(model, inputs)
    wrapped = wrap(model)
    perturb(wrapped)
    with wrapped.disable_adapter():
        assert torch.equal(logits(wrapped, inputs), base)
    assert not torch.equal(logits(wrapped, inputs), base)


@pytest.mark.parametrize("kind", MODELS)
def test_merge_equals_unmerged_and_leaves_the_base_architecture(kind):
    model, inputs = MODELS[kind]()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = wrap(model, block_lora_target_modules=["all-linear"])
    config = wrapped.peft_config["default"]
    perturb(wrapped)
    updates = {
        name.removeprefix("base_model.model."): dense_update(layer, config)
        for name, layer in block_layers(wrapped).items()
    }
    unmerged = logits(wrapped, inputs)
    merged_model = wrapped.merge_and_unload()
    assert (logits(merged_model, inputs) - unmerged).abs().max() <= 1e-5
    merged_state = merged_model.state_dict()
    assert {k: v.shape for k, v in merged_state.items()} == {k: v.shape for k, v in base_state.items()}
    assert block_layers(merged_model) == {}
    for name, update in updates.items():  # W' = W + ΔW, nothing else changed
        torch.testing.assert_close(merged_state[f"{name}.weight"], base_state[f"{name}.weight"] + update)
    untouched = [k for k in base_state if not any(k == f"{name}.weight" for name in updates)]
    assert all(torch.equal(merged_state[k], base_state[k]) for k in untouched)


def test_unmerge_restores_the_base_weights():
    model, inputs = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = wrap(model)
    perturb(wrapped)
    unmerged = logits(wrapped, inputs)
    wrapped.merge_adapter()
    merged = {k.replace(".base_layer.", "."): v for k, v in wrapped.base_model.model.state_dict().items()}
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q_proj], before[q_proj])
    assert (logits(wrapped, inputs) - unmerged).abs().max() <= 1e-5
    wrapped.unmerge_adapter()
    assert (logits(wrapped, inputs) - unmerged).abs().max() <= 1e-5
    after = wrapped.unload().state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=1e-6, atol=1e-6)


def test_indivisible_input_size_is_a_clear_error_that_changes_nothing():
    model, _ = llama()
    message = r"block_lora_n=5 .*model\.layers\.0\.self_attn\.q_proj \(d_in=32\)"
    with pytest.raises(UnsupportedModelError, match=message):
        wrap(model, block_lora_n=5)
    assert block_layers(model) == {}  # checked before any layer was replaced

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 30), nn.ReLU(), nn.Linear(30, 8))
    with pytest.raises(UnsupportedModelError, match=r"2 \(d_in=30\).*for d_in=30: 2, 3, 5, 6, 10, 15, 30"):
        wrap(net, block_lora_n=8, block_lora_target_modules=["0", "2"])
    assert block_layers(net) == {}  # "0" (d_in=32) is fine, but the refused adapter must not wrap it either
    assert len(block_layers(wrap(net, block_lora_n=8, block_lora_target_modules=["0"]))) == 1


def test_unsupported_models_are_clear_errors():
    with pytest.raises(UnsupportedModelError, match=r"Sequential has no attention projection named q_proj"):
        wrap(nn.Sequential(nn.Linear(8, 8)))
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM \(model_type llama\).*no_such_module"):
        wrap(tiny_llama(), block_lora_target_modules=["no_such_module"])
    with pytest.raises(UnsupportedModelError, match=r"embed_tokens \(Embedding\)"):
        wrap(tiny_llama(), block_lora_target_modules=["embed_tokens"])


# --- save and load -------------------------------------------------------------------------------


def test_save_then_load_in_a_fresh_process_is_bitwise_identical(tmp_path):
    model, inputs = llama()
    wrapped = wrap(model, block_lora_n=4, block_lora_r=3)
    perturb(wrapped)
    adapter = tmp_path / "adapter"
    wrapped.save_pretrained(str(adapter))
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BLOCK_LORA" and (saved["num_blocks"], saved["r"]) == (4, 3)
    assert (adapter / "adapter_model.safetensors").is_file()
    torch.save(inputs["input_ids"], tmp_path / "ids.pt")

    child = os.path.join(HERE, "block_lora_load_child.py")
    args = [sys.executable, child, str(adapter), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(wrapped, inputs))


# --- through TRL ---------------------------------------------------------------------------------


def test_trains_through_compose(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = ftplugins.compose(SFTTrainer, ["block_lora"], block_lora_n=4)
    args = cpu_args(SFTConfig, tmp_path, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2)
    trainer = cls(model=model, args=args, train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer())
    wrapped = trainer.model
    assert isinstance(wrapped, peft.PeftModel) and wrapped.peft_config["default"].peft_type == "BLOCK_LORA"
    initial = {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    assert initial and all(".block_lora_" in n for n in initial)
    trainer.train()
    after = dict(wrapped.named_parameters())
    assert all(not torch.equal(after[n], initial[n]) for n in initial)  # A* and B both moved
    base_after = wrapped.unload().state_dict()
    assert base_after.keys() == base_state.keys()
    assert all(torch.equal(base_after[k], v) for k, v in base_state.items())


# --- quantized bases and diffusers ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_base_forward_and_backward(bits, quantizable_model_dir):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    # Realistic widths: on a CPU with AVX512-BF16 the 4-bit layers take bitsandbytes' packed kernel in eval mode.
    model = AutoModelForCausalLM.from_pretrained(quantizable_model_dir, quantization_config=quant, device_map="cpu")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(5, 300, (2, 12), generator=_gen(1))
    base = _generic_path_logits(quantizable_model_dir, quant, ids)

    wrapped = wrap(model, block_lora_dropout=0.0)
    assert len(block_layers(wrapped)) == 6
    wrapped.eval()
    with torch.no_grad():  # eval without gradients: the path that repacks 4-bit weights on AVX512-BF16 CPUs
        assert torch.equal(wrapped(ids).logits, base)
    perturb(wrapped)
    with torch.no_grad():
        assert not torch.equal(wrapped(ids).logits, base)
    wrapped.train()  # after an eval forward, gradients must still reach every adapter
    wrapped(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in wrapped.named_parameters() if p.requires_grad}
    assert len(grads) == 12 and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    with pytest.raises(FtpluginsError, match=r"cannot be merged into 6 module\(s\).*quantized"):
        wrapped.merge_and_unload()
    after = wrapped.unload().state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_state.items())


def _generic_path_logits(path, quant, ids):
    """Eval logits of a second copy of the quantized base, every 4-bit layer on bitsandbytes' generic path (the one
    an adapted model takes on every CPU)."""
    from transformers import AutoModelForCausalLM

    from ftplugins.quantized_cpu import guard_cpu_4bit_packing

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map="cpu").eval()
    guard_cpu_4bit_packing(model, training=True)
    with torch.no_grad():
        return model(ids).logits


def test_attaches_to_a_diffusers_unet_and_trains_only_the_adapter():
    pytest.importorskip("diffusers")
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8, norm_num_groups=8,
    )
    attention_qkv = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in QKV]
    base = {n: p.detach().clone() for n, p in unet.named_parameters()}
    unet.add_adapter(ftplugins.peft_config("block_lora"))
    assert sorted(block_layers(unet)) == sorted(attention_qkv) and len(attention_qkv) == 42  # self- and cross-attn

    with torch.no_grad():  # B = 0 at init gives A* no gradient; start B elsewhere so one step moves both
        for name, param in unet.named_parameters():
            if ".block_lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=_gen(4)))
    initial = {n: p.detach().clone() for n, p in unet.named_parameters()}
    optimizer = torch.optim.SGD([p for p in unet.parameters() if p.requires_grad], lr=1e-1)
    gen = _gen(5)
    sample, text = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, 32, generator=gen)
    out = unet(sample, torch.tensor([10]), encoder_hidden_states=text).sample
    (out - torch.randn(out.shape, generator=gen)).pow(2).mean().backward()
    optimizer.step()
    after = dict(unet.named_parameters())
    adapter = {n for n in after if ".block_lora_" in n}
    assert len(adapter) == 2 * 42
    assert {n for n, p in after.items() if not torch.equal(p, initial[n])} == adapter
    base_after = {n.replace(".base_layer.", "."): p for n, p in after.items() if n not in adapter}
    assert base_after.keys() == base.keys()
    assert all(torch.equal(base_after[n], p) for n, p in base.items())
