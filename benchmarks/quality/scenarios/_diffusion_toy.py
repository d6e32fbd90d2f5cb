"""The diffusion scenarios' toy world: coloured shapes, a deterministic latent space, a tiny text-to-image model.

The tiny ``AutoencoderKL`` of :mod:`ftplugins.diffusion.tiny` is random; its encoder's log-variance is pinned at
the clamp (-30) so that an image has one latent (no sampling noise), scaled to unit variance over clean images.
That latent space *is* the image space of these scenarios: models are trained on encoded images, samples stay
latents (the random decoder would only blur them), and every metric is computed there. The denoiser is
``tiny.tiny_unet`` (ε-prediction, the scaled-linear DDPM schedule of Stable Diffusion).
"""

from __future__ import annotations

import random
from typing import Any

#: Backgrounds of the toy images (the PSO scenario's style is the grey one).
BACKGROUNDS = {"black": (0, 0, 0), "green": (30, 120, 50), "blue": (40, 60, 160), "grey": (170, 170, 170)}


def deterministic_vae(images: list[Any]):
    """The tiny VAE with a pinned log-variance and a scaling / shift that give ``images`` unit-variance latents."""
    import torch

    from ftplugins.diffusion import tiny
    from ftplugins.diffusion.collator import image_to_tensor

    vae = tiny.tiny_vae(seed=0)
    with torch.no_grad():
        channels = vae.config.latent_channels
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -30.0
        pixels = torch.stack([image_to_tensor(i, tiny.RESOLUTION) for i in images])
        means = vae.encode(pixels).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / means.std()), shift_factor=float(means.mean()))
    return vae.requires_grad_(False).eval()


def noise_scheduler():
    """Stable Diffusion's training schedule (scaled-linear betas, ε-prediction) *without* clipping x̂₀ to [-1, 1]:
    diffusers' ``clip_sample`` default (SD's own config turns it off) would squash these unit-variance latents in
    every DDIM step (the samplers are built from this config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type="epsilon", clip_sample=False)


def background_shift(latents: Any, start: Any, end: Any):
    """Where each latent's per-channel spatial mean lies on the line from the mean of ``start`` latents (0) to that
    of ``end`` latents (1): how far its background moved (the background fills most of a shape image)."""
    a, b = start.mean((0, 2, 3)), end.mean((0, 2, 3))
    return ((latents.mean((2, 3)) - a) @ (b - a)) / (b - a).pow(2).sum()


def encode(vae: Any, images: list[Any], batch: int = 256):
    """Scaled latents of PIL ``images`` ([N, 4, 8, 8]; what the DiffusionTrainer trains on)."""
    import torch

    from ftplugins.diffusion import tiny
    from ftplugins.diffusion.collator import image_to_tensor

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = torch.stack([image_to_tensor(i, tiny.RESOLUTION) for i in images[start:start + batch]])
            out.append((vae.encode(pixels).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor)
    return torch.cat(out)


def shape_images(n: int, seed: int, shapes=("square", "disc", "bar"), colours=("red", "green", "blue", "yellow"),
                 backgrounds=("black",), centred: bool = False) -> list[tuple[Any, str, str, str]]:
    """``n`` (image, shape, colour, background) drawn uniformly (:func:`draw_shape`)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shape, colour, background = rng.choice(shapes), rng.choice(colours), rng.choice(backgrounds)
        out.append((draw_shape(shape, colour, background, rng, centred), shape, colour, background))
    return out


def draw_shape(shape: str, colour: str, background: str, rng: random.Random, centred: bool = False):
    """``tiny.shape_image`` on a named background. ``centred``: a 9-11 px shape within a pixel of the centre, as in
    the cropped photographs of fine-grained datasets, where a linear classifier on the latents tells the shapes apart
    (an oracle on 600 real images: 0.71 of test images uncentred, 1.00 centred)."""
    from ftplugins.diffusion import tiny

    return tiny.shape_image(shape, colour, BACKGROUNDS[background], rng, centred=centred)


class TextCache:
    """The frozen text encoder's conditioning per caption, computed once."""

    def __init__(self, text_encoder: Any, tokenizer: Any):
        self.text_encoder, self.tokenizer, self.cache = text_encoder, tokenizer, {}

    def __call__(self, captions: list[str]):
        import torch

        from ftplugins.diffusion.denoiser import TextConditioning, encode_text

        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            text = encode_text(self.text_encoder, ids)
            for i, caption in enumerate(missing):
                self.cache[caption] = (text.hidden_states[i], text.pooled[i])
        return TextConditioning(torch.stack([self.cache[c][0] for c in captions]),
                                torch.stack([self.cache[c][1] for c in captions]))


def train_denoiser(unet: Any, latents: Any, captions: list[str], text: TextCache, scheduler: Any, steps: int,
                   batch: int, lr: float, seed: int, log: Any = print, targets: Any = None, timesteps: Any = None):
    """Train ``unet`` in place with the ε-loss (uniform t), or, with ``targets`` / ``timesteps`` given, regress the
    ε that maps each given state ``latents[i]`` at ``timesteps[i]`` onto ``targets[i]`` (trajectory distillation)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    abar = scheduler.alphas_cumprod
    unet.train()
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=generator)
        cond = text([captions[i] for i in index.tolist()])
        if targets is None:
            x0 = latents[index]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
            noisy, target = scheduler.add_noise(x0, noise, t), noise
        else:
            noisy, t = latents[index], timesteps[index]
            a = abar[t].reshape(-1, 1, 1, 1)
            target = (noisy - a.sqrt() * targets[index]) / (1 - a).sqrt()
        prediction = unet(noisy, t, encoder_hidden_states=cond.hidden_states).sample
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"    step {step + 1}/{steps}: loss {loss.item():.4f}")
    return unet.eval()


def ddim_trajectories(unet: Any, captions: list[str], text: TextCache, scheduler: Any, steps: int, keep: list[int],
                      seed: int):
    """Deterministic DDIM (trailing) samples of ``captions``: (states at the timesteps ``keep`` [K, N, ...], the final
    latents [N, ...]) — the teacher's trajectories a few-step student is distilled from."""
    import torch
    from diffusers import DDIMScheduler

    sampler = DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    sampler.set_timesteps(steps)
    missing = [t for t in keep if t not in sampler.timesteps.tolist()]
    if missing:
        raise ValueError(f"timesteps {missing} are not on the {steps}-step trailing grid {sampler.timesteps.tolist()}")
    cond = text(captions)
    latents = torch.randn((len(captions), 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    states = {}
    with torch.no_grad():
        for t in sampler.timesteps:
            if int(t) in keep:
                states[int(t)] = latents.clone()
            eps = unet(latents, t.expand(len(captions)), encoder_hidden_states=cond.hidden_states).sample
            latents = sampler.step(eps, t, latents, return_dict=False)[0]
    return torch.stack([states[t] for t in keep]), latents


def sample(unet: Any, captions: list[str], text: TextCache, scheduler: Any, kind: str, steps: int, seed: int):
    """Latents sampled by ``unet`` in ``steps`` steps of ``kind`` (trailing timesteps), guidance 0 — ftplugins' own
    sampler, as PSO's reference set is drawn (a fresh scheduler each time: diffusers' samplers keep a step index)."""
    import torch

    from ftplugins.diffusion.sampling import few_step_sampler, sample_latents

    return sample_latents(unet.eval(), text(captions), few_step_sampler(scheduler, kind, steps),
                          (len(captions), 4, 8, 8),
                          torch.Generator().manual_seed(seed), "unet")


def nearest(samples: Any, reference: Any):
    """(distance to the nearest reference latent / √dim, its index) for each sample."""
    import torch

    d = torch.cdist(samples.flatten(1), reference.flatten(1)) / samples[0].numel() ** 0.5
    distance, index = d.min(dim=1)
    return distance, index
