"""``DiffusionTrainer``: a ``transformers.Trainer`` whose model is a diffusers denoiser.

diffusers' example scripts drive Accelerate by hand, so no Trainer hook reaches them. Here the denoiser (a
``UNet2DConditionModel`` or an MM-DiT transformer such as ``SD3Transformer2DModel``) *is* the Trainer's model;
the text encoder and VAE ride along frozen (never given to the optimizer, no gradient, ``eval()``), and the loss
is the standard denoising objective of :mod:`ftplugins.diffusion.objectives`. Everything the Trainer does —
optimizer, schedule, accumulation, DDP through Accelerate, checkpoints, resume — and every ftplugins hook
(``peft_config`` adapters on the denoiser, ``prepare_model``, ``create_optimizer``, ``compute_loss``, callbacks,
``post_train``) therefore applies unchanged: ``ftplugins.compose(DiffusionTrainer, [...])``.

A batch (from :class:`~ftplugins.diffusion.collator.ImageCaptionCollator`) holds ``input_ids`` and either
``pixel_values`` (encoded by the VAE, a latent sampled from its distribution) or cached ``latent_moments``; it may
also carry ``latents`` (already scaled), ``noise`` and ``timesteps``, which then replace the random draws (tests,
and methods that pair images under one ε and t).

The run's randomness (noise, timesteps, latent samples) comes from torch's global generator, which the Trainer
seeds and saves in every checkpoint, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer

from ftplugins.compat import DiffusersCheckpointLoading
from ftplugins.errors import FtpluginsError
from ftplugins.patching import unpatched

from .collator import LATENT_COLUMN, ImageCaptionCollator
from .config import DiffusionConfig
from .denoiser import TextConditioning, base_denoiser, denoise, denoiser_kind, encode_text
from .latents import cache_latents
from .objectives import noisy_latents, per_sample_error, prediction_type_of, regression_target, sample_timesteps

# Imported inside `python -m ftplugins.run` (a wrapped script's first import), transformers.Trainer is the composed
# class for the script: build on transformers' own, and let the patching compose this class (ftplugins.patching).
Trainer = unpatched("Trainer", Trainer)

class DiffusionTrainer(DiffusersCheckpointLoading, Trainer):
    """Fine-tunes ``model`` (a diffusers denoiser) on (image, caption) rows.

    Args:
        model: the denoiser to train (the pipeline's ``unet`` / ``transformer``).
        text_encoder, vae: the pipeline's; frozen here and moved to the training device.
        noise_scheduler: the training noise scheduler (``DDPMScheduler`` for ε / v, ``FlowMatchEulerDiscreteScheduler``
            for flow matching); never ``set_timesteps`` on it.
        processing_class: the tokenizer of ``text_encoder``.
        args: a :class:`DiffusionConfig` (plain ``TrainingArguments`` work with its defaults).
        peft_config: a PEFT config to wrap ``model`` in (as TRL's trainers take it); a LoRA is also saved as
            ``pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights`` reads.
    """

    #: Plugins that restrict their trainers apply only if they name this class (``trainers = ("DiffusionTrainer",)``);
    #: one declared for ``Trainer`` (text / encoder models) is refused by name (:mod:`ftplugins.composition`).
    ftplugins_family = "DiffusionTrainer"

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        text_encoder: Any = None,
        vae: Any = None,
        noise_scheduler: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        callbacks: Any = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        missing = [name for name, value in (("model", model), ("text_encoder", text_encoder), ("vae", vae),
                                            ("noise_scheduler", noise_scheduler),
                                            ("processing_class", processing_class)) if value is None]
        if missing:
            raise FtpluginsError(f"DiffusionTrainer needs {', '.join(missing)}: pass the pipeline's denoiser as "
                                 "model=, its text_encoder=, vae=, a training noise_scheduler= and its tokenizer as "
                                 "processing_class=.")
        if isinstance(model, str):
            raise FtpluginsError(f"DiffusionTrainer takes a loaded denoiser, got the path {model!r}; load it with "
                                 "UNet2DConditionModel.from_pretrained(path, subfolder='unet') (or the transformer).")
        self.denoiser_kind = denoiser_kind(model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        args = args if args is not None else DiffusionConfig(output_dir="trainer_output")
        self.prediction_type = prediction_type_of(noise_scheduler, getattr(args, "prediction_type", None))
        self.text_encoder = _frozen(text_encoder)
        self.vae = _frozen(vae)
        self.noise_scheduler = noise_scheduler
        resolution = self.resolution = getattr(args, "resolution", None) or int(vae.config.sample_size)
        if data_collator is None:
            data_collator = ImageCaptionCollator(processing_class, resolution,
                                                 image_column=getattr(args, "image_column", "image"),
                                                 caption_column=getattr(args, "caption_column", "caption"))
        for split, dataset in (("train", train_dataset), ("eval", eval_dataset)):
            _check_columns(dataset, split, getattr(args, "image_column", "image"),
                           getattr(args, "caption_column", "caption"))
        if getattr(args, "remove_unused_columns", False):
            raise FtpluginsError("remove_unused_columns=True would drop the image and caption columns the "
                                 "diffusion collator reads; set remove_unused_columns=False (DiffusionConfig's "
                                 "default).")
        if getattr(args, "cache_latents", False) and train_dataset is not None:
            if not isinstance(data_collator, ImageCaptionCollator):
                raise FtpluginsError("cache_latents needs the default ImageCaptionCollator (it reads the images); "
                                     "drop data_collator= or cache_latents.")
            train_dataset = cache_latents(train_dataset, self.vae, data_collator)
        # The tokenizer stays out of the Trainer's processing_class: the Trainer would align a text model's special
        # tokens with it (the denoiser has none) and save it as the model's own; _save writes it beside the model.
        self.tokenizer = processing_class
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, callbacks=callbacks,
                         optimizers=optimizers, **kwargs)
        # The loss is a per-micro-batch mean: the Trainer divides it by the accumulation steps, and evaluation
        # computes it although the batch has no labels (both are public Trainer attributes).
        self.model_accepts_loss_kwargs = False
        self.can_return_loss = True
        if self.args.label_names is None:
            self.label_names = []  # not the UNet's ``class_labels`` argument, which the Trainer takes for labels
        self.text_encoder.to(self.args.device)
        self.vae.to(self.args.device)

    # --- the pieces of the loss, public for methods that pair images (PSO) ---------------------------------------

    def encode_prompts(self, input_ids: Any) -> TextConditioning:
        """The frozen text encoder's conditioning for tokenized captions (no gradient)."""
        return encode_text(self.text_encoder, input_ids.to(self.text_encoder.device))

    def latents_of(self, inputs: dict) -> Any:
        """Scaled latents of a batch: given ``latents``, else a sample from cached moments or the VAE's encoding."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if "latents" in inputs:
            return inputs["latents"]
        if LATENT_COLUMN not in inputs and "pixel_values" not in inputs:
            raise FtpluginsError("the batch has no images (image_column is ''): this loss needs (image, caption) "
                                 "rows; set image_column to the dataset's image column.")
        with torch.no_grad():
            if LATENT_COLUMN in inputs:
                latents = DiagonalGaussianDistribution(inputs[LATENT_COLUMN].to(self.vae.dtype)).sample()
            else:
                latents = self.vae.encode(inputs["pixel_values"].to(self.vae.dtype)).latent_dist.sample()
        return self.scale_latents(latents)

    def scale_latents(self, latents: Any) -> Any:
        """VAE latents -> the denoiser's latent space ((z - shift) * scale, as the pipelines do)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (int(self.vae.config.latent_channels), self.resolution // factor, self.resolution // factor)

    def tokenize(self, captions: list[str]) -> Any:
        """Token ids of ``captions`` as the collator makes them."""
        if isinstance(self.data_collator, ImageCaptionCollator):
            return self.data_collator.tokenize(captions)
        return ImageCaptionCollator(self.tokenizer, self.resolution).tokenize(captions)

    def draw_noise_and_timesteps(self, latents: Any) -> tuple[Any, Any]:
        """ε ~ N(0, I) like ``latents`` and uniform training timesteps (torch's global generator)."""
        noise = torch.randn_like(latents)
        return noise, sample_timesteps(self.noise_scheduler, latents.shape[0], latents.device)

    def denoising_error(self, model: Any, latents: Any, noise: Any, timesteps: Any, text: TextConditioning) -> Any:
        """Per-sample mean squared error of ``model``'s prediction against the objective's target (a [batch] tensor)."""
        noisy = noisy_latents(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        target = regression_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        prediction = denoise(model, noisy, timesteps, text, self.denoiser_kind)
        return per_sample_error(prediction, target)

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        latents = self.latents_of(inputs)
        noise, timesteps = inputs.get("noise"), inputs.get("timesteps")
        if noise is None or timesteps is None:
            drawn_noise, drawn_timesteps = self.draw_noise_and_timesteps(latents)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_timesteps if timesteps is None else timesteps
        error = self.denoising_error(model, latents, noise, timesteps, self.encode_prompts(inputs["input_ids"]))
        loss = error.mean()
        return (loss, {"per_sample_error": error}) if return_outputs else loss

    # --- saving in the diffusers layout -------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A bare denoiser is saved with its own ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model
        .safetensors``: ``UNet2DConditionModel.from_pretrained(output_dir)`` loads it); PEFT-wrapped ones as the
        Trainer saves them (the adapter only)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if hasattr(model, "get_base_model") or not hasattr(model, "save_pretrained"):
            super()._save(output_dir, state_dict=state_dict)
            if self.args.should_save and hasattr(model, "get_base_model"):
                save_lora_for_pipelines(model, self.denoiser_kind, output_dir)
            return
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, is_main_process=True)
        self.tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def load_diffusers_weights(self, folder: str, model: Any) -> None:
        """Resume: the denoiser's weights from a checkpoint in the diffusers layout (called through
        :class:`ftplugins.compat.DiffusersCheckpointLoading`)."""
        from safetensors.torch import load_file

        target = base_denoiser(model)
        weights = os.path.join(folder, self.DIFFUSERS_WEIGHTS)
        target.load_state_dict(load_file(weights, device=str(next(target.parameters()).device)))


def save_lora_for_pipelines(model: Any, kind: str, output_dir: str) -> None:
    """A PEFT LoRA on the denoiser, also as ``pytorch_lora_weights.safetensors`` in diffusers' format (what
    ``train_text_to_image_lora.py`` writes; ``pipe.load_lora_weights(output_dir)`` reads it, alpha included).
    Other adapter types have no diffusers loader: ``ftplugins.load_adapter(pipe.unet, output_dir)`` reads them."""
    from peft import LoraConfig, get_peft_model_state_dict

    config = model.peft_config.get(model.active_adapter)
    if not isinstance(config, LoraConfig):
        return
    from diffusers.loaders import SD3LoraLoaderMixin, StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers

    prefix = "base_model.model."
    layers = {key.removeprefix(prefix): value for key, value in get_peft_model_state_dict(model).items()}
    layers = convert_state_dict_to_diffusers(layers)
    metadata = config.to_dict()
    if kind == "unet":
        StableDiffusionLoraLoaderMixin.save_lora_weights(output_dir, unet_lora_layers=layers,
                                                        unet_lora_adapter_metadata=metadata)
    else:
        SD3LoraLoaderMixin.save_lora_weights(output_dir, transformer_lora_layers=layers,
                                             transformer_lora_adapter_metadata=metadata)


def _frozen(module: Any) -> Any:
    module.requires_grad_(False)
    return module.eval()


def _check_columns(dataset: Any, split: str, image_column: str, caption_column: str) -> None:
    names = getattr(dataset, "column_names", None)
    if names is None:
        return
    missing = [c for c in (caption_column,) if c not in names]
    if image_column and image_column not in names and LATENT_COLUMN not in names:
        missing.insert(0, image_column)
    if missing:
        raise FtpluginsError(f"the {split} dataset has columns ({', '.join(names)}) but DiffusionTrainer needs "
                             f"{', '.join(repr(m) for m in missing)}; set image_column= / caption_column= in the "
                             "DiffusionConfig or rename the columns (dataset.rename_column).")
