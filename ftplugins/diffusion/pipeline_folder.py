"""Reading a diffusers pipeline (a local folder with ``model_index.json`` or a Hub id) into what
:class:`~ftplugins.diffusion.DiffusionTrainer` takes, and writing a trained one back in the layouts diffusers loads.

Only the components training needs are loaded, each from its subfolder with the class ``model_index.json`` names:
the denoiser (``unet`` or ``transformer``), ``text_encoder`` + ``tokenizer``, ``vae`` and ``scheduler``. The training
noise scheduler is built from the pipeline's scheduler config, as diffusers' ``train_text_to_image.py`` does:
``DDPMScheduler`` for ε / v-prediction models, ``FlowMatchEulerDiscreteScheduler`` for flow-matching ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ftplugins.errors import ModelPathError, UnsupportedModelError

DENOISERS = ("unet", "transformer")
NEEDED = ("text_encoder", "tokenizer", "vae", "scheduler")


@dataclass
class PipelineParts:
    """The components of a pipeline that a training run uses."""

    denoiser_name: str  # "unet" or "transformer": the pipeline's attribute (and subfolder) of the denoiser
    denoiser: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    noise_scheduler: Any  # the training scheduler (DDPM / flow matching)
    sampler: Any  # the pipeline's own scheduler, as saved


def pipeline_index(path: str, revision: str | None = None) -> dict:
    """``model_index.json`` of the pipeline ``path``; a folder or Hub id that is not a pipeline is refused, naming
    what it is instead."""
    import json
    import os

    from ftplugins.model_path import check_model_path

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
        config = os.path.join(path, "config.json")
        if os.path.isfile(config):
            with open(config) as handle:
                config = json.load(handle)
            what = config.get("_class_name") or ", ".join(config.get("architectures") or []) or "a transformers model"
            raise ModelPathError(
                f"model {path!r} holds one model ({what}), not a diffusers pipeline: give the pipeline's folder "
                f"(model_index.json beside unet/ or transformer/, text_encoder/, tokenizer/, vae/, scheduler/).")
    check_model_path(path, revision, config_name="model_index.json", kind="a diffusers pipeline")
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(path, revision=revision)
    denoisers = [name for name in DENOISERS if _listed(index, name)]
    missing = [name for name in NEEDED if not _listed(index, name)]
    if not denoisers or missing:
        parts = ", ".join(name for name in index if not name.startswith("_") and _listed(index, name))
        lacking = ", ".join(([] if denoisers else ["denoiser (unet or transformer)"]) + missing)
        raise UnsupportedModelError(
            f"pipeline {path!r} ({index.get('_class_name', '?')}: {parts}) has no {lacking}; a text-to-image "
            "fine-tuning run needs a denoiser, text_encoder, tokenizer, vae and scheduler.")
    return index


def load_pipeline_parts(path: str, revision: str | None = None) -> PipelineParts:
    """The denoiser (trainable), text encoder, tokenizer, VAE and schedulers of the pipeline ``path``."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    index = pipeline_index(path, revision)
    denoiser_name = next(name for name in DENOISERS if _listed(index, name))
    loaded = {name: _load_component(path, revision, name, index[name])
              for name in (denoiser_name, *NEEDED)}
    sampler = loaded["scheduler"]
    if "FlowMatch" in type(sampler).__name__:
        noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(sampler.config)
    else:
        noise_scheduler = DDPMScheduler.from_config(sampler.config)
    return PipelineParts(denoiser_name=denoiser_name, denoiser=loaded[denoiser_name],
                         text_encoder=loaded["text_encoder"], tokenizer=loaded["tokenizer"], vae=loaded["vae"],
                         noise_scheduler=noise_scheduler, sampler=sampler)


def save_pipeline(source: str, revision: str | None, denoiser_name: str, denoiser: Any, output_dir: str) -> None:
    """Write the pipeline ``source`` with its denoiser replaced by ``denoiser`` into ``output_dir`` (staged, each file
    whole), as diffusers' ``train_text_to_image.py`` saves a full fine-tuning run: ``DiffusionPipeline
    .from_pretrained(output_dir)`` loads it."""
    from diffusers import DiffusionPipeline

    from ftplugins.atomic import staged_dir

    pipeline = DiffusionPipeline.from_pretrained(source, revision=revision, **{denoiser_name: denoiser})
    with staged_dir(output_dir) as tmp:
        pipeline.save_pretrained(tmp)


def _listed(index: dict, name: str) -> bool:
    value = index.get(name)
    return isinstance(value, (list, tuple)) and len(value) == 2 and value[0] is not None and value[1] is not None


def _load_component(path: str, revision: str | None, name: str, entry: list) -> Any:
    library, class_name = entry
    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        raise UnsupportedModelError(f"pipeline {path!r}: its {name} is {library}.{class_name}, which this "
                                    f"installation cannot import; install or upgrade {library}.") from None
    return cls.from_pretrained(path, subfolder=name, revision=revision)
