"""Tiny offline diffusion components, built from configs with random weights (nothing downloads).

A tiny ``UNet2DConditionModel`` (and, for flow matching, a tiny ``SD3Transformer2DModel``), a tiny CLIP text
encoder over the locally trained tokenizer of :mod:`ftplugins.testing`, a tiny ``AutoencoderKL`` (16 px images ->
4 x 8 x 8 latents) and a dataset of coloured shapes with captions. Used by the tests, the recipes and the PSO
scenario; sized so that a training step takes milliseconds on one CPU thread.
"""

from __future__ import annotations

import random
from typing import Any

#: Image side of the tiny components (the VAE halves it: latents are 8 x 8).
RESOLUTION = 16
#: Width of the tiny text encoder's hidden states = the denoisers' cross-attention width.
TEXT_WIDTH = 32
#: Tokens per caption.
CAPTION_LENGTH = 12

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "disc", "bar")
#: Backgrounds of the BOB data (:func:`write_backgrounds_folder`): a class-agnostic attribute of each image. Short
#: names: "square, snow" fits the tiny text encoder's ``CAPTION_LENGTH`` tokens whole.
BACKGROUNDS = {"moss": (40, 120, 50), "sand": (200, 180, 120), "sky": (120, 170, 230), "snow": (235, 235, 240)}
#: Classes of the BOB data: one shape each, in its own colour.
BACKGROUND_CLASSES = {"square": "red", "disc": "blue", "bar": "yellow"}


def tiny_tokenizer():
    """The locally trained byte-level BPE tokenizer, with captions padded / truncated to ``CAPTION_LENGTH``."""
    from ftplugins.testing import tiny_tokenizer as base

    tokenizer = base()
    tokenizer.model_max_length = CAPTION_LENGTH
    return tokenizer


def tiny_text_encoder(seed: int = 0):
    """A 2-layer ``CLIPTextModel`` (what Stable Diffusion pipelines take; its ``pooler_output`` feeds transformer
    denoisers' pooled input)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CAPTION_LENGTH,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config)


def tiny_vae(seed: int = 0):
    """A 2-level ``AutoencoderKL``: 3 x 16 x 16 images <-> 4 x 8 x 8 latents."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=RESOLUTION,
    )


def tiny_unet(seed: int = 0, **overrides: Any):
    """A ``UNet2DConditionModel`` with cross-attention in both resolutions (about 70k parameters)."""
    import torch
    from diffusers import UNet2DConditionModel

    values = dict(
        sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=4,
    )
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**values, **overrides})


def tiny_sd3_transformer(seed: int = 0):
    """A one-block ``SD3Transformer2DModel`` (an MM-DiT denoiser, trained with flow matching)."""
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=RESOLUTION // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, caption_projection_dim=16,
        pooled_projection_dim=TEXT_WIDTH, pos_embed_max_size=8,
    )


def ddpm_scheduler(prediction_type: str = "epsilon"):
    """The training noise scheduler of Stable Diffusion (1000 steps, scaled-linear betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=prediction_type)


def flow_scheduler():
    """The rectified-flow scheduler of SD3 (``x_t = (1 - σ) x_0 + σ ε``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def few_step_scheduler():
    """A few-step sampler as timestep-distilled models use (Euler, trailing timesteps: 999, 749, 499, 249 at 4)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, timestep_spacing="trailing", steps_offset=1)


def shape_image(shape: str, colour: str, background: tuple[int, int, int] = (0, 0, 0),
                rng: random.Random | None = None, centred: bool = False):
    """A ``RESOLUTION`` px PIL image of one coloured ``shape`` (6-9 px) at a random position on ``background``;
    ``centred``: 9-11 px, within a pixel of the centre."""
    from PIL import Image, ImageDraw

    rng = rng or random.Random(0)
    image = Image.new("RGB", (RESOLUTION, RESOLUTION), background)
    draw = ImageDraw.Draw(image)
    if centred:
        size = rng.randint(9, 11)
        x = (RESOLUTION - size) // 2 + rng.randint(-1, 1)
        y = (RESOLUTION - size) // 2 + rng.randint(-1, 1)
    else:
        size = rng.randint(6, 9)
        x, y = rng.randint(0, RESOLUTION - size), rng.randint(0, RESOLUTION - size)
    box = (x, y, x + size - 1, y + size - 1)
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "disc":
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle((x, y + size // 3, x + size - 1, y + 2 * size // 3), fill=fill)
    return image


def shapes_dataset(n: int = 16, seed: int = 0, colours: tuple[str, ...] | None = None):
    """A ``datasets.Dataset`` of ``image`` (PIL) / ``caption`` rows: "a red disc", ..."""
    from datasets import Dataset, Features, Image, Value

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(colours or tuple(COLOURS))
        rows.append({"image": shape_image(shape, colour, rng=rng), "caption": f"a {colour} {shape}"})
    return Dataset.from_list(rows, features=Features({"image": Image(), "caption": Value("string")}))


def tiny_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` of the tiny components, with the few-step sampler of timestep-distilled models
    as its scheduler (what ``ftplugins tiny-model --kind diffusion`` saves; random weights, nothing downloads)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed), tokenizer=tiny_tokenizer(),
                                   unet=tiny_unet(seed), scheduler=few_step_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def tiny_projected_text_encoder(seed: int = 0):
    """:func:`tiny_text_encoder` with a projection head (``CLIPTextModelWithProjection``, what SD3 pipelines take):
    ``text_embeds`` of width ``TEXT_WIDTH`` are the pooled input of :func:`tiny_sd3_transformer`."""
    import torch
    from transformers import CLIPTextModelWithProjection

    config = tiny_text_encoder(seed).config
    config.projection_dim = TEXT_WIDTH
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config)


def tiny_sd3_pipeline(seed: int = 0):
    """A ``StableDiffusion3Pipeline`` of tiny parts (no T5: ``text_encoder_3=None``) around
    :func:`tiny_sd3_transformer`, with the flow-matching scheduler: a pipeline folder for training runs of a
    transformer denoiser and for loading what they save (``pipe.load_lora_weights``).

    Not for judging the trained model's samples: :class:`~ftplugins.diffusion.DiffusionTrainer` conditions on
    ``text_encoder`` alone (its last hidden states and ``text_embeds``), while SD3's prompt encoding concatenates
    both CLIP encoders' penultimate states and pooled embeddings (width 2 x ``TEXT_WIDTH``), which this transformer's
    pooled input does not take. Load it with ``StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None,
    tokenizer_3=None)``."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed), scheduler=flow_scheduler(), vae=tiny_vae(seed),
        text_encoder=tiny_projected_text_encoder(seed), tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_projected_text_encoder(seed + 1), tokenizer_2=tiny_tokenizer(), text_encoder_3=None,
        tokenizer_3=None)


def save_tiny_pipeline(path: str, seed: int = 0) -> str:
    """Save :func:`tiny_pipeline` to ``path`` (``DiffusionPipeline.from_pretrained(path)`` loads it)."""
    tiny_pipeline(seed).save_pretrained(path)
    return path


def write_shapes_folder(path: str, splits: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """An image folder of :func:`shapes_dataset` rows in diffusers' ``train_text_to_image.py`` layout: per split,
    ``path/<split>/NNNN.png`` and ``metadata.jsonl`` lines ``{"file_name": ..., "caption": ...}``. Returns the
    metadata files."""
    import json
    import os

    written = []
    for split, (n, seed) in (splits or {"train": (32, 0), "test": (8, 1)}).items():
        folder = os.path.join(path, split)
        os.makedirs(folder, exist_ok=True)
        rows = []
        for index, row in enumerate(shapes_dataset(n, seed=seed)):
            name = f"{index:04d}.png"
            row["image"].save(os.path.join(folder, name))
            rows.append({"file_name": name, "caption": row["caption"]})
        metadata = os.path.join(folder, "metadata.jsonl")
        with open(metadata, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        written.append(metadata)
    return written


def write_backgrounds_folder(path: str, per_class: int = 4, seed: int = 0) -> list[str]:
    """BOB's kind of data: a few real images per class (``label`` "square": a red square, "disc", "bar") on varied
    backgrounds, with the background named in its own column. An image folder (``path/train/NNNN.png`` and
    ``metadata.jsonl`` lines ``{"file_name", "caption", "label", "background"}``); returns the metadata file."""
    import json
    import os

    rng = random.Random(seed)
    folder = os.path.join(path, "train")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for label, colour in BACKGROUND_CLASSES.items():
        for _ in range(per_class):
            background = rng.choice(sorted(BACKGROUNDS))
            name = f"{len(rows):04d}.png"
            shape_image(label, colour, BACKGROUNDS[background], rng).save(os.path.join(folder, name))
            rows.append({"file_name": name, "caption": f"a {colour} {label}", "label": label,
                         "background": background})
    metadata = os.path.join(folder, "metadata.jsonl")
    with open(metadata, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return [metadata]


def write_diffusion_datasets(root: str) -> list[str]:
    """What ``ftplugins tiny-data --kind diffusion ROOT`` writes: ``ROOT/shapes`` (:func:`write_shapes_folder`) and
    ``ROOT/backgrounds`` (:func:`write_backgrounds_folder`). Returns the metadata files."""
    import os

    return write_shapes_folder(os.path.join(root, "shapes")) + write_backgrounds_folder(os.path.join(root, "backgrounds"))
