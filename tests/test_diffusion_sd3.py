"""A transformer denoiser through the command line: `python -m ftplugins.train diffusion --use_peft` on a tiny SD3
pipeline folder trains a LoRA on the MM-DiT's attention projections (to_q, to_k, to_v, to_out.0) with the
flow-matching loss, and saves it in SD3's LoRA format, which `StableDiffusion3Pipeline.load_lora_weights` reads into
the same function PEFT's adapter files give."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from ftplugins.diffusion import tiny  # noqa: E402
from ftplugins.train import train  # noqa: E402

ATTENTION = ("to_q", "to_k", "to_v", "to_out")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-sd3"))
    tiny.tiny_sd3_pipeline().save_pretrained(path)
    return path


def load_pipeline(path):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)


def transformer_output(transformer):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, tiny.CAPTION_LENGTH, tiny.TEXT_WIDTH, generator=generator)
    pooled = torch.randn(2, tiny.TEXT_WIDTH, generator=generator)
    with torch.no_grad():
        return transformer(hidden_states=latents, encoder_hidden_states=hidden, pooled_projections=pooled,
                           timestep=torch.tensor([250.0, 750.0]), return_dict=False)[0]


def test_a_lora_on_the_sd3_transformers_attention_trains_through_the_cli_and_loads_into_the_pipeline(
        sd3_dir, diffusion_data_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file

    from ftplugins.diffusion import pipeline_folder

    parts = []
    real_load = pipeline_folder.load_pipeline_parts
    monkeypatch.setattr(pipeline_folder, "load_pipeline_parts", lambda *a: parts.append(real_load(*a)) or parts[-1])
    out = tmp_path / "lora"
    train(["diffusion", "--model_name_or_path", sd3_dir, "--dataset_name", f"{diffusion_data_dir}/shapes",
           "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate",
           "1e-2", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
           "--seed", "0", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "4"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert saved and all(k.startswith("transformer.") and "lora" in k for k in saved)
    assert all(any(f".{m}." in k for m in ATTENTION) for k in saved), sorted(saved)[:4]
    assert parts and parts[0].denoiser_name == "transformer"
    assert type(parts[0].noise_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # the flow-matching loss

    base = transformer_output(load_pipeline(sd3_dir).transformer)
    peft = PeftModel.from_pretrained(load_pipeline(sd3_dir).transformer, str(out))
    pipe = load_pipeline(sd3_dir)
    pipe.load_lora_weights(str(out))
    loaded = transformer_output(pipe.transformer)
    assert not torch.allclose(loaded, base, atol=1e-5)  # the LoRA trained (gaussian init: B = 0 at the start)
    torch.testing.assert_close(loaded, transformer_output(peft), rtol=0, atol=1e-5)


def test_ssf_on_the_sd3_transformers_attention_trains_through_the_cli_and_load_adapter_reads_it(
        sd3_dir, diffusion_data_dir, tmp_path):
    import ftplugins

    out = tmp_path / "ssf"
    train(["diffusion", "--model_name_or_path", sd3_dir, "--dataset_name", f"{diffusion_data_dir}/shapes",
           "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate",
           "1e-2", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
           "--seed", "0", "--plugins", "ssf", "--ssf_target_modules", "to_q", "to_k", "to_v", "to_out.0"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "SSF" and set(config["target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    base = transformer_output(load_pipeline(sd3_dir).transformer)
    adapted = ftplugins.load_adapter(load_pipeline(sd3_dir).transformer, str(out))
    trained = {n for n, p in adapted.named_parameters() if "ssf" in n}
    assert trained and all(any(f".{m}." in n for m in ATTENTION) for n in trained), sorted(trained)[:4]
    assert not torch.allclose(transformer_output(adapted), base, atol=1e-5)  # SSF starts at the identity
