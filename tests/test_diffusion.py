"""DiffusionTrainer: the denoising objectives against hand computations, training lowers the loss with the text
encoder and VAE frozen, save / load / resume in the diffusers layout, latent caching, adapters and SaRA on the
denoiser through compose, LLM-only plugins refused, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_args

pytest.importorskip("diffusers")

import ftplugins  # noqa: E402
from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer  # noqa: E402
from ftplugins.diffusion import tiny  # noqa: E402
from ftplugins.errors import FtpluginsError, UnsupportedModelError  # noqa: E402
from ftplugins.testing import StopAt  # noqa: E402

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def make_trainer(tmp_path, model=None, scheduler=None, trainer_cls=DiffusionTrainer, dataset=None, **overrides):
    args = cpu_args(DiffusionConfig, tmp_path, per_device_train_batch_size=4, **overrides)
    return trainer_cls(model=model if model is not None else tiny.tiny_unet(), args=args,
                       train_dataset=dataset if dataset is not None else tiny.shapes_dataset(8),
                       text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                       noise_scheduler=scheduler or tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())


def fixed_batch(trainer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = trainer.tokenizer(["a red disc", "a blue bar"], padding="max_length", truncation=True,
                            return_tensors="pt").input_ids
    return {"input_ids": ids, "latents": torch.randn(2, 4, 8, 8, generator=gen),
            "noise": torch.randn(2, 4, 8, 8, generator=gen)}


# --- the objectives --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_unet_loss_equals_hand_computation(tmp_path, prediction_type):
    trainer = make_trainer(tmp_path, scheduler=tiny.ddpm_scheduler(prediction_type))
    assert trainer.prediction_type == prediction_type
    batch = fixed_batch(trainer)
    batch["timesteps"] = torch.tensor([10, 700])
    x0, eps, t = batch["latents"], batch["noise"], batch["timesteps"]
    abar = trainer.noise_scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    target = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    hidden = trainer.text_encoder(input_ids=batch["input_ids"]).last_hidden_state
    with torch.no_grad():
        expected = ((trainer.model(noisy, t, encoder_hidden_states=hidden).sample - target) ** 2).mean()
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_flow_matching_loss_of_a_transformer_denoiser_equals_hand_computation(tmp_path):
    trainer = make_trainer(tmp_path, model=tiny.tiny_sd3_transformer(), scheduler=tiny.flow_scheduler())
    assert (trainer.denoiser_kind, trainer.prediction_type) == ("transformer", "flow_matching")
    batch = fixed_batch(trainer)
    grid = trainer.noise_scheduler.timesteps
    batch["timesteps"] = grid[torch.tensor([5, 900])]
    x0, eps = batch["latents"], batch["noise"]
    sigma = (batch["timesteps"] / 1000).reshape(-1, 1, 1, 1)  # shift = 1: σ = t / T
    noisy = (1 - sigma) * x0 + sigma * eps
    out = trainer.text_encoder(input_ids=batch["input_ids"])
    with torch.no_grad():
        prediction = trainer.model(hidden_states=noisy, encoder_hidden_states=out.last_hidden_state,
                                   pooled_projections=out.pooler_output, timestep=batch["timesteps"]).sample
        expected = ((prediction - (eps - x0)) ** 2).mean()
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_drawn_timesteps_and_noise_follow_the_scheduler(tmp_path):
    trainer = make_trainer(tmp_path)
    torch.manual_seed(0)
    noise, t = trainer.draw_noise_and_timesteps(torch.zeros(512, 1))
    assert t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000 and t.unique().numel() > 300
    assert noise.shape == (512, 1) and abs(float(noise.std()) - 1) < 0.15


# --- training ---------------------------------------------------------------------------------------------------


def fixed_error(trainer, batch, t):
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, {**batch, "timesteps": t}))


def test_training_lowers_the_loss_and_leaves_text_encoder_and_vae_untouched(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=30, learning_rate=3e-3, cache_latents=True,
                           dataset=tiny.shapes_dataset(4))
    assert "latent_moments" in trainer.train_dataset.column_names and "image" not in trainer.train_dataset.column_names
    frozen = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in (("text_encoder", trainer.text_encoder), ("vae", trainer.vae))}
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {"input_ids": batch["input_ids"], "latents": trainer.latents_of(batch),
             "noise": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    t = torch.tensor([100, 300, 500, 800])
    before = fixed_error(trainer, batch, t)
    trainer.train()
    assert fixed_error(trainer, batch, t) < 0.9 * before
    for name, module in (("text_encoder", trainer.text_encoder), ("vae", trainer.vae)):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters()), name
        for key, value in module.state_dict().items():
            assert torch.equal(value, frozen[name][key]), (name, key)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.model.parameters()}


def test_evaluate_reports_the_denoising_loss(tmp_path):
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=2)
    metrics = trainer.evaluate(tiny.shapes_dataset(4, seed=1))
    assert metrics["eval_loss"] > 0 and torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_cached_latents_are_the_vae_moments(tmp_path):
    trainer = make_trainer(tmp_path, cache_latents=True, dataset=tiny.shapes_dataset(3))
    images = tiny.shapes_dataset(3)
    pixels = torch.stack([trainer.data_collator.pixels(row, i) for i, row in enumerate(images)])
    with torch.no_grad():
        expected = trainer.vae.encode(pixels).latent_dist.parameters
    cached = torch.tensor(trainer.train_dataset["latent_moments"])
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)


def test_saved_denoiser_loads_with_diffusers_and_a_run_resumes_to_the_same_weights(tmp_path):
    from diffusers import UNet2DConditionModel

    whole = make_trainer(tmp_path / "whole", max_steps=4, learning_rate=1e-3)
    whole.train()
    whole.save_model()
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "whole")
    for name, value in whole.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    first = make_trainer(tmp_path / "resumed", max_steps=4, learning_rate=1e-3, save_strategy="steps", save_steps=2)
    first.add_callback(StopAt(2))
    first.train()
    assert (tmp_path / "resumed" / "checkpoint-2" / "diffusion_pytorch_model.safetensors").is_file()
    second = make_trainer(tmp_path / "resumed", max_steps=4, learning_rate=1e-3, save_strategy="steps", save_steps=2)
    second.train(resume_from_checkpoint=True)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


# --- plugins on the denoiser ------------------------------------------------------------------------------------


ADAPTERS = {
    "ssf": {"ssf_target_modules": ATTENTION},
    "block_lora": {"block_lora_target_modules": ATTENTION, "block_lora_n": 2, "block_lora_r": 2},
    "bottleneck": {"bottleneck_target_modules": ATTENTION, "bottleneck_preset": "llm_adapters_parallel",
                   "bottleneck_size": 4},
}


@pytest.mark.parametrize("denoiser", ["unet", "sd3"])
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapters_train_on_the_attention_of_the_denoiser_only(tmp_path, name, denoiser):
    from peft import PeftModel

    trainer_cls = ftplugins.compose(DiffusionTrainer, [name], **ADAPTERS[name])
    unet = tiny.tiny_unet() if denoiser == "unet" else tiny.tiny_sd3_transformer()
    scheduler = tiny.ddpm_scheduler() if denoiser == "unet" else tiny.flow_scheduler()
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer = make_trainer(tmp_path, model=unet, scheduler=scheduler, trainer_cls=trainer_cls, max_steps=3,
                           learning_rate=1e-2)
    assert isinstance(trainer.model, PeftModel)
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(any(f".{m}." in n for m in ATTENTION) for n in trained), sorted(trained)[:5]
    adapter_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if n in adapter_before
             and not torch.equal(p.detach(), adapter_before[n])]
    assert moved
    base_after = trainer.model.get_base_model().state_dict()
    for key, value in base.items():
        layer_key = next((k for k in (key, key.replace(".weight", ".base_layer.weight"),
                                      key.replace(".bias", ".base_layer.bias")) if k in base_after), None)
        assert layer_key is not None and torch.equal(base_after[layer_key], value), key


def test_sara_trains_only_the_small_entries_of_the_unet(tmp_path):
    from ftplugins.methods.sara import plugin as sara, select

    unet = tiny.tiny_unet()
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.05)
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer_cls = ftplugins.compose(DiffusionTrainer, [sara], sara_threshold=2e-3)
    trainer = make_trainer(tmp_path, model=unet, trainer_cls=trainer_cls, max_steps=2, learning_rate=1e-2)
    trainer.train()
    targets = set(trainer.ftplugins_run.state["sara"]["targets"])
    moved = 0
    for name, param in trainer.model.named_parameters():
        changed = param.detach() != base[name]
        if name in targets:
            assert not (changed & ~select(base[name], 2e-3)).any(), name
            moved += int(changed.sum())
        else:
            assert not changed.any(), name
    assert moved > 0


@pytest.mark.parametrize("name,options", [("lift", {"lift_rank": 2, "lift_density": 0.1}), ("lt_sft", {})])
def test_sparse_methods_train_selected_unet_entries_and_their_delta_rebuilds_it(tmp_path, name, options):
    """LIFT and LT-SFT on the denoiser: tensors outside the plugin's targets never move, few entries of the targets
    do, and the saved `sparse_delta.safetensors` applied to the pre-trained UNet gives the trained one exactly."""
    from ftplugins.sparse.delta import apply_delta, load_delta

    unet = tiny.tiny_unet()
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer = make_trainer(tmp_path, model=unet, trainer_cls=ftplugins.compose(DiffusionTrainer, [name], **options),
                           max_steps=2, learning_rate=1e-2)
    trainer.train()  # post_train writes output_dir/sparse_delta.safetensors
    targets = trainer.ftplugins_run.state[name]["targets"]  # lt_sft: {"maskable": [...], "head": [...]}
    targets = {n for group in targets.values() for n in group} if isinstance(targets, dict) else set(targets)
    trained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    moved = total = 0
    for key, value in trained.items():
        changed = value != base[key]
        if key in targets:
            moved, total = moved + int(changed.sum()), total + changed.numel()
        else:
            assert not changed.any(), key
    assert 0 < moved < total / 2
    rebuilt = tiny.tiny_unet()
    rebuilt.load_state_dict(base)
    apply_delta(rebuilt, load_delta(str(tmp_path / "sparse_delta.safetensors")), check_base=False)
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_intruders_logs_on_the_denoiser_what_the_offline_analysis_finds(tmp_path):
    """The intruders callback under full fine-tuning of a UNet: counted every step, and the last count equals
    `intruders.analyze` of the pre-trained and trained matrices."""
    from ftplugins.tools import intruders

    unet = tiny.tiny_unet()
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer_cls = ftplugins.compose(DiffusionTrainer, ["intruders"], intruders_every=1, intruders_k=2)
    trainer = make_trainer(tmp_path, model=unet, trainer_cls=trainer_cls, max_steps=2, learning_rate=5e-2)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "intruders/total" in row]
    assert len(logged) == 2
    params = dict(trainer.model.named_parameters())
    pairs = [(n, base[n], params[n].detach()) for n in base if n in params and intruders.selected(n, base[n].shape, None)]
    assert pairs  # the UNet's 2-D matrices (attention, projections) are analysed
    report = intruders.analyze(pairs, k=2, epsilons=[trainer.ftplugins_run.options["intruders"].intruders_epsilon])
    assert logged[-1]["intruders/total"] == float(report.total(report.epsilons[0]))


def test_lp_ft_probes_the_named_head_of_a_unet_then_trains_it_whole(tmp_path):
    """LP-FT on a denoiser, whose "head" the user names (`conv_out`): only it moves while probing, the rest after."""
    from transformers import TrainerCallback

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.at = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.at[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    unet = tiny.tiny_unet()
    initial = {n: p.detach().clone() for n, p in unet.named_parameters()}
    trainer_cls = ftplugins.compose(DiffusionTrainer, ["lp_ft"], lp_ft_head=["conv_out"], lp_ft_probe_steps=2)
    trainer = make_trainer(tmp_path, model=unet, trainer_cls=trainer_cls, max_steps=4, learning_rate=1e-2)
    seen = Snapshots()
    trainer.add_callback(seen)
    trainer.train()
    moved = lambda a, b: {n for n in a if not torch.equal(a[n], b[n])}  # noqa: E731
    assert moved(initial, seen.at[2]) == {"conv_out.weight", "conv_out.bias"}
    assert len(moved(seen.at[2], seen.at[4]) - {"conv_out.weight", "conv_out.bias"}) > 10


@pytest.mark.parametrize("name", ["masked_thought", "deep_align", "many_icl", "s3ft"])
def test_llm_only_plugins_are_refused_by_name(tmp_path, name):
    trainer_cls = ftplugins.compose(DiffusionTrainer, [name])
    with pytest.raises(FtpluginsError, match=rf"plugin {name} applies to SFTTrainer, not to DiffusionTrainer"):
        make_trainer(tmp_path, trainer_cls=trainer_cls)


# --- bad input --------------------------------------------------------------------------------------------------


def test_a_model_that_is_not_a_denoiser_is_refused(tmp_path):
    from ftplugins.testing import tiny_llama

    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM is not a diffusers denoiser"):
        make_trainer(tmp_path, model=tiny_llama())


def test_missing_components_and_columns_are_named(tmp_path):
    with pytest.raises(FtpluginsError, match="needs text_encoder, vae"):
        DiffusionTrainer(model=tiny.tiny_unet(), noise_scheduler=tiny.ddpm_scheduler(),
                         processing_class=tiny.tiny_tokenizer())
    renamed = tiny.shapes_dataset(2).rename_column("caption", "text")
    with pytest.raises(FtpluginsError, match="needs 'caption'; set image_column= / caption_column="):
        make_trainer(tmp_path, dataset=renamed)


def test_an_unreadable_image_names_its_row(tmp_path):
    from datasets import Dataset

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    trainer = make_trainer(tmp_path, dataset=Dataset.from_list([{"image": str(broken), "caption": "a red disc"}]))
    with pytest.raises(FtpluginsError, match="row 0: the image in column 'image' cannot be read"):
        trainer.data_collator([trainer.train_dataset[0]])


# --- pipelines built from a saved run ---------------------------------------------------------------------------


def generate(unet, text_encoder, vae):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny.tiny_tokenizer(), unet=unet,
                                   scheduler=tiny.few_step_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red disc", num_inference_steps=4, guidance_scale=0.0, height=tiny.RESOLUTION,
                width=tiny.RESOLUTION, generator=torch.Generator().manual_seed(0), output_type="pt").images


def test_a_pipeline_built_from_a_saved_run_generates_what_the_trained_denoiser_does(tmp_path):
    from diffusers import UNet2DConditionModel

    trainer = make_trainer(tmp_path / "full", max_steps=3, learning_rate=1e-2)
    trainer.train()
    trainer.save_model()
    with torch.no_grad():
        expected = generate(trainer.model.eval(), trainer.text_encoder, trainer.vae)
        images = generate(UNet2DConditionModel.from_pretrained(tmp_path / "full"), trainer.text_encoder, trainer.vae)
    assert images.shape == (1, 3, tiny.RESOLUTION, tiny.RESOLUTION) and torch.isfinite(images).all()
    torch.testing.assert_close(images, expected)

    adapted_cls = ftplugins.compose(DiffusionTrainer, ["ssf"], ssf_target_modules=ATTENTION)
    adapted = make_trainer(tmp_path / "ssf", trainer_cls=adapted_cls, max_steps=3, learning_rate=1e-2)
    adapted.train()
    adapted.save_model()
    with torch.no_grad():
        expected = generate(adapted.model.eval(), adapted.text_encoder, adapted.vae)
        loaded = ftplugins.load_adapter(tiny.tiny_unet(), str(tmp_path / "ssf"))  # a fresh base + the saved adapter
        images = generate(loaded.eval(), adapted.text_encoder, adapted.vae)
        base = generate(tiny.tiny_unet().eval(), adapted.text_encoder, adapted.vae)
    torch.testing.assert_close(images, expected)
    assert not torch.allclose(images, base)  # the adapter changes what the pipeline generates


def test_shape_image_centred_sits_within_a_pixel_of_the_centre_and_the_default_draw_is_unchanged():
    import random

    import numpy as np

    background = (0, 0, 0)
    for seed in range(20):
        pixels = np.asarray(tiny.shape_image("square", "red", background, random.Random(seed), centred=True))
        rows, cols = np.nonzero(pixels.any(axis=2))
        size = rows.max() - rows.min() + 1
        assert 9 <= size <= 11 and cols.max() - cols.min() + 1 == size
        for low, high in ((rows.min(), rows.max()), (cols.min(), cols.max())):
            assert abs((low + high) / 2 - (tiny.RESOLUTION - 1) / 2) <= 1.5
    # the default keeps its draws (size, then x and y) so every record made with it reproduces
    rng, reference = random.Random(5), random.Random(5)
    pixels = np.asarray(tiny.shape_image("square", "red", background, rng))
    size = reference.randint(6, 9)
    x, y = reference.randint(0, tiny.RESOLUTION - size), reference.randint(0, tiny.RESOLUTION - size)
    rows, cols = np.nonzero(pixels.any(axis=2))
    assert (rows.min(), cols.min(), rows.max() - rows.min() + 1) == (y, x, size)
    assert rng.random() == reference.random()
