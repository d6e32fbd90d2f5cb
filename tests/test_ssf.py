"""SSF: exact identity at init, parameter count, merge, disable, save/load in a fresh process, TRL."""

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
from ftplugins.errors import FtpluginsError, ModelPathError, OptionError, UnsupportedModelError
from ftplugins.testing import arithmetic_dataset, minilm_classifier, tiny_llama, tiny_tokenizer, tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))


# --- helpers -------------------------------------------------------------------------------------


def llama():
    return tiny_llama(seed=0).eval(), {"input_ids": torch.randint(5, 300, (2, 12), generator=_gen(1))}, []


def bert():
    model = minilm_classifier().eval()
    ids = torch.randint(1000, 20000, (2, 10), generator=_gen(2))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["classifier"]


def vit():
    return tiny_vit(seed=0).eval(), {"pixel_values": torch.randn(2, 3, 16, 16, generator=_gen(3))}, ["classifier"]


MODELS = {"llama": llama, "bert": bert, "vit": vit}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def ssf_layers(model) -> list[str]:
    return [name for name, module in model.named_modules() if type(module).__name__ == "SSFLayer"]


def perturb(model, seed: int = 0) -> None:
    """Move every γ, β away from the identity."""
    gen = _gen(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ssf_scale." in name:
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            elif ".ssf_shift." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def expected_trainable(model, heads: list[str], shift_everywhere: bool = False) -> int:
    """Σ over adapted modules of dim·(γ, plus β where the module has a bias) + the heads, from the base model."""
    total = 0
    for name, module in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in [*heads, "lm_head"]):
            continue
        if isinstance(module, nn.Linear):
            dim = module.out_features
        elif isinstance(module, nn.Conv2d):
            dim = module.out_channels
        elif isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            dim = module.weight.shape[-1]
        else:
            continue
        has_bias = getattr(module, "bias", None) is not None
        total += dim * (2 if has_bias or shift_everywhere else 1)
    return total + sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the plugin and its options ------------------------------------------------------------------


def test_plugin_module_does_not_import_torch():
    code = "import sys, ftplugins.methods.ssf as m; assert 'torch' not in sys.modules; print(m.plugin)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "ssf" in out.stdout


def test_bad_option_is_an_option_error():
    with pytest.raises(OptionError, match="ssf_init"):
        ftplugins.peft_config("ssf", ssf_init="bogus")
    with pytest.raises(OptionError, match="ssf_rank"):
        ftplugins.peft_config("ssf", ssf_rank=4)


def test_options_parse_from_the_command_line():
    from transformers import HfArgumentParser

    from ftplugins.methods.ssf.options import SSFOptions

    (opts,) = HfArgumentParser(SSFOptions).parse_args_into_dataclasses(
        ["--ssf_target_modules", "q_proj", "v_proj", "--ssf_init", "normal", "--ssf_shift_without_bias", "true"]
    )
    assert opts == SSFOptions(ssf_target_modules=["q_proj", "v_proj"], ssf_init="normal", ssf_shift_without_bias=True)


def test_peft_config_carries_the_options():
    config = ftplugins.peft_config("ssf", ssf_target_modules=["q_proj"], ssf_shift_without_bias=True)
    assert type(config).__name__ == "SSFConfig" and config.peft_type == "SSF"
    assert config.target_modules == ["q_proj"] and config.shift_without_bias is True
    assert config.modules_to_save is None and config.trainable_token_indices is None
    # --ssf_init is PEFT's init_weights in the config: identity = True, the reference's normal init = False.
    assert config.init_weights is True and ftplugins.peft_config("ssf", ssf_init="normal").init_weights is False


# --- the adapter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_identity_at_init_is_exact(kind):
    model, inputs, _ = MODELS[kind]()
    base = logits(model, inputs)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    assert len(ssf_layers(wrapped)) > 0
    assert torch.equal(logits(wrapped, inputs), base)


@pytest.mark.parametrize("kind", MODELS)
def test_trainable_count_is_two_vectors_per_module_plus_head(kind):
    model, _, heads = MODELS[kind]()
    expected = expected_trainable(model, heads)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    assert trainable(wrapped) == expected
    assert wrapped.peft_config["default"].modules_to_save == heads


def test_trainable_count_with_shift_everywhere():
    model, _, _ = llama()
    expected = expected_trainable(model, [], shift_everywhere=True)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf", ssf_shift_without_bias=True))
    assert trainable(wrapped) == expected


@pytest.mark.parametrize("kind", MODELS)
def test_merge_equals_unmerged_and_leaves_the_base_architecture(kind):
    model, inputs, _ = MODELS[kind]()
    base_shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    perturb(wrapped)
    unmerged = logits(wrapped, inputs)
    merged_model = wrapped.merge_and_unload()
    assert (logits(merged_model, inputs) - unmerged).abs().max() <= 1e-5
    assert {k: v.shape for k, v in merged_model.state_dict().items()} == base_shapes
    assert ssf_layers(merged_model) == []


def test_unmerge_restores_the_base_weights():
    model, inputs, _ = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    perturb(wrapped)
    unmerged = logits(wrapped, inputs)
    wrapped.merge_adapter()
    assert (logits(wrapped, inputs) - unmerged).abs().max() <= 1e-5
    wrapped.unmerge_adapter()
    after = wrapped.unload().state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=1e-6, atol=1e-6)


def test_shift_without_bias_works_unmerged_but_refuses_to_merge():
    model, inputs, _ = llama()
    base = logits(model, inputs)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf", ssf_shift_without_bias=True))
    perturb(wrapped)
    unmerged = logits(wrapped, inputs)
    assert not torch.equal(unmerged, base)
    with pytest.raises(FtpluginsError, match=r"model\.layers\.0\.self_attn\.q_proj .*shift on a module without bias"):
        wrapped.merge_and_unload()
    assert torch.equal(logits(wrapped, inputs), unmerged)  # the refused merge changed nothing


def test_norm_that_does_not_scale_by_its_weight_refuses_to_merge():
    class OnePlusRMSNorm(nn.Module):  # Gemma's form: x̂·(1 + w), for which w' = γ⊙w would be wrong
        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    torch.manual_seed(0)
    wrapped = peft.get_peft_model(nn.Sequential(nn.Linear(4, 4), OnePlusRMSNorm(4)), ftplugins.peft_config("ssf"))
    assert ssf_layers(wrapped) == ["base_model.model.0", "base_model.model.1"]
    with pytest.raises(FtpluginsError, match="1 .OnePlusRMSNorm does not compute"):
        wrapped.merge_and_unload()


@pytest.mark.parametrize("kind", ["llama", "vit"])
def test_disabled_adapter_gives_the_base_output(kind):
    model, inputs, _ = MODELS[kind]()
    base = logits(model, inputs)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    perturb(wrapped)
    with wrapped.disable_adapter():
        assert torch.equal(logits(wrapped, inputs), base)
    assert not torch.equal(logits(wrapped, inputs), base)


def test_normal_init_is_the_papers_and_not_an_identity():
    model, inputs, _ = llama()
    base = logits(model, inputs)
    torch.manual_seed(0)
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf", ssf_init="normal"))
    scales = torch.cat([p.detach() for n, p in wrapped.named_parameters() if ".ssf_scale." in n])
    assert 0.01 < scales.std() < 0.03 and abs(scales.mean() - 1) < 0.01
    assert not torch.equal(logits(wrapped, inputs), base)


def test_no_matching_module_is_an_unsupported_model_error():
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        peft.get_peft_model(nn.Sequential(nn.ReLU()), ftplugins.peft_config("ssf"))
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM \(model_type llama\).*no_such_module"):
        peft.get_peft_model(tiny_llama(), ftplugins.peft_config("ssf", ssf_target_modules=["no_such_module"]))
    with pytest.raises(UnsupportedModelError, match=r"embed_tokens \(Embedding\)"):
        peft.get_peft_model(tiny_llama(), ftplugins.peft_config("ssf", ssf_target_modules=["embed_tokens"]))


# --- save and load -------------------------------------------------------------------------------


def test_save_then_load_in_a_fresh_process_is_bitwise_identical(tmp_path):
    model, inputs, _ = llama()
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf", ssf_shift_without_bias=True))
    perturb(wrapped)
    adapter = tmp_path / "adapter"
    wrapped.save_pretrained(str(adapter))
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "SSF"
    assert (adapter / "adapter_model.safetensors").is_file()
    torch.save(inputs["input_ids"], tmp_path / "ids.pt")

    child = os.path.join(HERE, "ssf_load_child.py")
    args = [sys.executable, child, str(adapter), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(wrapped, inputs))


def test_load_adapter_restores_the_head_and_loads_plain_peft_types(tmp_path):
    model, inputs, _ = vit()
    wrapped = peft.get_peft_model(model, ftplugins.peft_config("ssf"))
    perturb(wrapped)
    with torch.no_grad():
        wrapped.base_model.model.classifier.modules_to_save["default"].weight.mul_(3)
    wrapped.save_pretrained(str(tmp_path / "ssf"))
    loaded = ftplugins.load_adapter(tiny_vit(seed=0).eval(), str(tmp_path / "ssf"))
    assert torch.equal(logits(loaded, inputs), logits(wrapped, inputs))

    lora_config = peft.LoraConfig(target_modules=["q_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(tiny_llama(seed=0).eval(), lora_config)
    lora.save_pretrained(str(tmp_path / "lora"))
    ids = llama()[1]
    loaded = ftplugins.load_adapter(tiny_llama(seed=0).eval(), str(tmp_path / "lora"))
    assert torch.equal(logits(loaded, ids), logits(lora, ids))


def test_load_adapter_errors(tmp_path):
    with pytest.raises(ModelPathError, match="adapter_config.json"):
        ftplugins.load_adapter(tiny_llama(), str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "NO_SUCH_TYPE"}))
    with pytest.raises(FtpluginsError, match=r"'NO_SUCH_TYPE'.*SSF \(ssf\)"):
        ftplugins.load_adapter(tiny_llama(), str(tmp_path))


def test_registration_is_idempotent_and_guarded():
    from ftplugins.methods.ssf.config import SSFConfig
    from ftplugins.methods.ssf.model import SSFModel
    from ftplugins.peft_types import register_peft_type

    register_peft_type("SSF", SSFConfig, SSFModel, prefix="ssf_")
    assert peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING["SSF"] is SSFModel

    class OtherConfig(SSFConfig):
        pass

    with pytest.raises(FtpluginsError, match="already registered"):
        register_peft_type("SSF", OtherConfig, SSFModel, prefix="ssf_")
    with pytest.raises(FtpluginsError, match="built-in"):
        register_peft_type("LORA", SSFConfig, SSFModel, prefix="ssf_")
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING["SSF"] is SSFConfig


# --- through TRL ---------------------------------------------------------------------------------


def check_only_ssf_trained(trainer, base_state: dict) -> None:
    wrapped = trainer.model
    assert isinstance(wrapped, peft.PeftModel) and wrapped.peft_config["default"].peft_type == "SSF"
    trained = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trained and all(".ssf_" in n for n in trained)
    scales = torch.cat([p.detach().flatten() for n, p in trained.items() if ".ssf_scale." in n])
    assert not torch.equal(scales, torch.ones_like(scales))
    after = wrapped.unload().state_dict()
    assert after.keys() == base_state.keys()
    assert all(torch.equal(after[k], v) for k, v in base_state.items())


def sft_args(tmp_path):
    from trl import SFTConfig

    return cpu_args(SFTConfig, tmp_path, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2)


def test_trains_through_trl_peft_config(tmp_path):
    from trl import SFTTrainer

    model = tiny_llama()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path), train_dataset=arithmetic_dataset(16),
                         processing_class=tiny_tokenizer(), peft_config=ftplugins.peft_config("ssf"))
    trainer.train()
    check_only_ssf_trained(trainer, base_state)


def test_trains_through_compose(tmp_path):
    from trl import SFTTrainer

    model = tiny_llama()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = ftplugins.compose(SFTTrainer, ["ssf"])
    trainer = cls(model=model, args=sft_args(tmp_path), train_dataset=arithmetic_dataset(16),
                  processing_class=tiny_tokenizer())
    trainer.train()
    check_only_ssf_trained(trainer, base_state)
