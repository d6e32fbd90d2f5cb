"""PSO's offline reference set: ``pso_num_references`` latents sampled once from the *initial* distilled model
with the class prompt (few steps, guidance 0), cached in the output folder so that a resumed run pairs against
the very same set.

The released script samples images and encodes them again with the VAE at every step; we keep the sampled
latents (the decode / encode round trip is not the identity and buys nothing for the pairing).
"""

from __future__ import annotations

import os
from typing import Any

from ftplugins.atomic import staged_dir
from ftplugins.diffusion.sampling import sample_latents
from ftplugins.errors import FtpluginsError

FILENAME = "pso_reference_latents.safetensors"
BATCH = 8


def reference_path(output_dir: str) -> str:
    return os.path.join(output_dir, FILENAME)


def describe(options: Any, shape: tuple[int, ...]) -> dict[str, str]:
    """What the set depends on; a cached set made under other settings is refused on resume."""
    return {"class_prompt": options.pso_class_prompt, "num_references": str(options.pso_num_references),
            "sampling_steps": str(options.pso_sampling_steps), "sampler": options.pso_sampler,
            "latent_shape": "x".join(map(str, shape))}


def reference_set(trainer: Any, options: Any, sampler: Any, seed: int, resuming: bool) -> Any:
    """The reference latents [N, C, H, W] on the trainer's device: read from the cache when resuming (when it
    exists), else sampled now and written there by the main process."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shape = trainer.latent_shape()
    wanted = describe(options, shape)
    path = reference_path(trainer.args.output_dir)
    if resuming and os.path.isfile(path):
        with safe_open(path, framework="pt") as f:
            found = f.metadata() or {}
            if found != wanted:
                raise FtpluginsError(f"the cached PSO reference set {path} was made with {found}, this run asks for "
                                     f"{wanted}; resume with the same pso_* options or start a new output_dir.")
            return f.get_tensor("latents").to(trainer.args.device)
    latents = draw(trainer, options, sampler, seed, shape)
    if trainer.args.should_save:
        with staged_dir(trainer.args.output_dir) as tmp:
            save_file({"latents": latents.detach().cpu().contiguous()}, os.path.join(tmp, FILENAME), metadata=wanted)
    if not torch.isfinite(latents).all():
        raise FtpluginsError("the PSO reference set sampled from the initial model has non-finite values; check the "
                             "denoiser, the noise scheduler and pso_sampler.")
    return latents


def draw(trainer: Any, options: Any, sampler: Any, seed: int, shape: tuple[int, ...]) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        chunks, left = [], options.pso_num_references
        while left:
            n = min(BATCH, left)
            ids = trainer.tokenize([options.pso_class_prompt] * n).to(trainer.args.device)
            text = trainer.encode_prompts(ids)
            chunks.append(sample_latents(model, text, sampler, (n, *shape), generator, trainer.denoiser_kind))
            left -= n
    finally:
        model.train(was_training)
    return torch.cat(chunks)
