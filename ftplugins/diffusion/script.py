"""The training script behind ``python -m ftplugins.train diffusion`` (what ``trl.scripts.sft`` is to ``sft``).

Text-to-image fine-tuning of a diffusers pipeline's denoiser with :class:`~ftplugins.diffusion.DiffusionTrainer`,
in the spirit of diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``: the model is a pipeline
(folder or Hub id), the data an image folder or a ``datasets`` image + caption dataset, and the result is saved in
the layout diffusers loads:

* full fine-tuning: the whole pipeline with the trained denoiser (``DiffusionPipeline.from_pretrained(OUT)``);
* ``--use_peft`` (LoRA on the attention projections, TRL's ``lora_*`` names): ``pytorch_lora_weights.safetensors``
  (``pipe.load_lora_weights(OUT)``) beside PEFT's ``adapter_model.safetensors``;
* an adapter plugin (ssf, block_lora, bottleneck): the PEFT adapter (``ftplugins.load_adapter(pipe.unet, OUT)``).

The argument names are TRL's where TRL has one (``model_name_or_path``, ``dataset_name``, ``use_peft``, ``lora_r``),
so a diffusion recipe reads like an SFT one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import OptionError

from .config import DiffusionConfig

#: The denoiser's attention projections: what diffusers' LoRA scripts target by default.
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class DiffusionScriptArguments:
    model_name_or_path: str = field(default=None, metadata={
        "help": "A diffusers pipeline: a local folder (model_index.json beside unet/ or transformer/, text_encoder/, "
                "tokenizer/, vae/, scheduler/) or a Hub id. `ftplugins tiny-model --kind diffusion DIR` writes a tiny "
                "offline one."})
    model_revision: str = field(default=None, metadata={"help": "Hub revision of the pipeline."})
    dataset_name: str = field(default=None, metadata={
        "help": "An image folder (images + metadata.jsonl with file_name and a caption column, as in diffusers' "
                "train_text_to_image.py), a dataset saved with save_to_disk, or a datasets Hub id of images and "
                "captions."})
    dataset_config: str = field(default=None, metadata={"help": "The dataset's configuration name (Hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={
        "help": "Split to evaluate on (only when eval_strategy is not 'no')."})
    use_peft: bool = field(default=False, metadata={
        "help": "Train a PEFT LoRA on the denoiser instead of all its weights; saved for pipe.load_lora_weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (--use_peft)."})
    lora_alpha: int = field(default=16, metadata={
        "help": "LoRA alpha (--use_peft); default = lora_r, the scale 1 of diffusers' LoRA scripts."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (--use_peft)."})
    lora_target_modules: list[str] = field(default=None, metadata={
        "help": "Module names LoRA wraps (--use_peft); default the attention projections to_q, to_k, to_v, to_out.0."})


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((DiffusionScriptArguments, DiffusionConfig), prog=prog)


def check_model(path: str, revision: str | None = None) -> None:
    """Before anything heavy: ``path`` is a pipeline with a denoiser, text encoder, tokenizer, VAE and scheduler."""
    from .pipeline_folder import pipeline_index

    pipeline_index(path, revision)


def main(script_args: DiffusionScriptArguments, training_args: DiffusionConfig) -> Any:
    """Load, train, save; returns the trainer."""
    from .image_folder import load_image_caption_dataset
    from .pipeline_folder import load_pipeline_parts
    from .trainer import DiffusionTrainer

    if not script_args.dataset_name:
        raise OptionError("--dataset_name is required: an image folder (images + metadata.jsonl) or a datasets id.")
    parts = load_pipeline_parts(script_args.model_name_or_path, script_args.model_revision)
    resolution = training_args.resolution or int(parts.vae.config.sample_size)
    check_resolution(parts, resolution, script_args.model_name_or_path)

    def split(name: str) -> Any:
        return load_image_caption_dataset(script_args.dataset_name, script_args.dataset_config, name,
                                          caption_column=training_args.caption_column,
                                          image_column=training_args.image_column, resolution=resolution)

    trainer = DiffusionTrainer(
        model=parts.denoiser, args=training_args, train_dataset=split(script_args.dataset_train_split),
        eval_dataset=split(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None,
        text_encoder=parts.text_encoder, vae=parts.vae, noise_scheduler=parts.noise_scheduler,
        processing_class=parts.tokenizer, peft_config=lora_config(script_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save(trainer, parts.denoiser_name, script_args, training_args.output_dir)
    trainer.accelerator.print(f"Saved to {training_args.output_dir}.")
    trainer.end()
    return trainer


def lora_config(script_args: DiffusionScriptArguments) -> Any:
    """The PEFT LoRA of ``--use_peft`` (None without it), initialised as diffusers' LoRA scripts do."""
    if not script_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha, lora_dropout=script_args.lora_dropout,
                      target_modules=script_args.lora_target_modules or ATTENTION, init_lora_weights="gaussian")


def check_resolution(parts: Any, resolution: int, source: str) -> None:
    """The denoiser can take latents of ``resolution`` px images: a multiple of what the VAE and the denoiser
    downsample by, and (transformers) within the positional embedding's grid."""
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    config = parts.denoiser.config
    if parts.denoiser_name == "unet":
        multiple = vae_factor * 2 ** (len(config.block_out_channels) - 1)
    else:
        multiple = vae_factor * int(getattr(config, "patch_size", 1) or 1)
    if resolution % multiple:
        raise OptionError(
            f"--resolution {resolution} does not fit the pipeline {source!r}: its VAE and {parts.denoiser_name} "
            f"need a multiple of {multiple} px (the pipeline's own is {parts.vae.config.sample_size}); set "
            f"--resolution {max(multiple, resolution // multiple * multiple)} or another multiple of {multiple}.")
    grid = getattr(config, "pos_embed_max_size", None)
    if grid and resolution // multiple > grid:
        largest = grid * multiple
        raise OptionError(f"--resolution {resolution} is larger than the {parts.denoiser_name} of {source!r} can "
                          f"place ({largest} px: pos_embed_max_size {grid}); set --resolution {largest} or less.")


def save(trainer: Any, denoiser_name: str, script_args: DiffusionScriptArguments, output_dir: str) -> None:
    """The run's result in the layout diffusers loads (see the module docstring); rank 0 writes, all wait."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    if hasattr(model, "get_base_model"):
        trainer.save_model(output_dir)  # the adapter (+ pytorch_lora_weights.safetensors for a LoRA)
        return
    if trainer.args.should_save:
        from .pipeline_folder import save_pipeline

        save_pipeline(script_args.model_name_or_path, script_args.model_revision, denoiser_name, model, output_dir)
        record = getattr(trainer, "ftplugins_run", None)
        if record is not None:
            from ftplugins.composition import write_manifest

            write_manifest(record, output_dir, getattr(trainer, "_ftplugins_published", 0))
    trainer.accelerator.wait_for_everyone()

