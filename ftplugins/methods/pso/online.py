"""Online PSO (C §5, ``train_online_pso_sdxl_dmd2.py``): per prompt, two few-step trajectories from the current
model, scored by a reward; the Pareto winner's per-step transitions are made more likely relative to the
reference model than the loser's.

Each distilled step is modelled as a Gaussian, p(x_{t'} | x_t) = N(√ᾱ_{t'} x̂₀(x_t), (1-ᾱ_{t'}) I) — the sampler
re-noises the predicted x̂₀ with fresh noise (consistency / LCM-style multistep sampling) — so the log-ratio of
θ to the reference at a step is -(‖x_{t'} - √ᾱ_{t'} x̂₀^θ‖² - ‖x_{t'} - √ᾱ_{t'} x̂₀^ref‖²) / (2(1-ᾱ_{t'})). The ratio
is clipped to [1-ε, 1+ε] (D3PO), and L = -log σ(β(log r⁺ - log r⁻)) per step, averaged over the trained steps
and the decided pairs. The last step (x̂₀ itself, deterministic) is not trained.

A scorer is a user function ``pkg.mod:func`` called as ``func(images, prompts)``: ``images`` [N, 3, H, W] in
[0, 1], ``prompts`` a list of N strings; it returns N scores, or [N, K] for K rewards (Pareto over them).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

from ftplugins.diffusion.denoiser import denoise
from ftplugins.errors import FtpluginsError


def load_scorer(path: str) -> Callable:
    """The function named by ``pkg.mod:func``; one clear line when it cannot be found."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise FtpluginsError(f"pso_scorer {path!r}: expected 'package.module:function' (a function(images, prompts) "
                             "returning one score per image).")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FtpluginsError(f"pso_scorer {path!r} cannot be loaded ({exc}); check the module is importable and "
                             "defines that function.") from None
    if not callable(func):
        raise FtpluginsError(f"pso_scorer {path!r} is not callable")
    return func


def pareto_preference(scores_a: Any, scores_b: Any) -> Any:
    """+1 where a dominates b (≥ on every reward, > on one), -1 where b dominates a, 0 otherwise (ties)."""
    import torch

    a, b = scores_a.reshape(len(scores_a), -1), scores_b.reshape(len(scores_b), -1)
    a_wins = (a >= b).all(dim=1) & (a > b).any(dim=1)
    b_wins = (b >= a).all(dim=1) & (b > a).any(dim=1)
    return a_wins.to(torch.float32) - b_wins.to(torch.float32)


def predicted_x0(alphas_cumprod: Any, noisy: Any, prediction: Any, timesteps: Any, prediction_type: str) -> Any:
    """x̂₀ from the denoiser's output at x_t under the DDPM parameterisation."""
    abar = alphas_cumprod.to(noisy.device)[timesteps].reshape(-1, *([1] * (noisy.ndim - 1))).to(noisy.dtype)
    if prediction_type == "epsilon":
        return (noisy - (1 - abar).sqrt() * prediction) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * noisy - (1 - abar).sqrt() * prediction
    if prediction_type == "sample":
        return prediction
    raise FtpluginsError(f"online pso: prediction_type {prediction_type!r} is not supported (epsilon, v_prediction, "
                         "sample)")


def gaussian_log_ratio(x_next: Any, x0_theta: Any, x0_ref: Any, abar_next: float) -> Any:
    """log p_θ(x_{t'} | x_t) - log p_ref(x_{t'} | x_t) per sample (the normalisers cancel)."""
    mean_scale = math.sqrt(abar_next)
    sq_theta = (x_next - mean_scale * x0_theta).pow(2).flatten(1).sum(dim=1)
    sq_ref = (x_next - mean_scale * x0_ref).pow(2).flatten(1).sum(dim=1)
    return -(sq_theta - sq_ref) / (2 * (1 - abar_next))


def online_pso_loss(log_ratio_a: Any, log_ratio_b: Any, preference: Any, beta: float, clip: float) -> Any:
    """-log σ(β(log r_win - log r_lose)) with log r clipped to [log(1-ε), log(1+ε)], per trained step ([steps, B]
    inputs), averaged over steps and decided pairs (0 with a graph when no pair is decided)."""
    import torch.nn.functional as F

    low, high = math.log(1 - clip), math.log(1 + clip)
    a, b = log_ratio_a.clamp(low, high), log_ratio_b.clamp(low, high)
    decided = preference != 0
    if not bool(decided.any()):
        return (a.sum() + b.sum()) * 0.0
    margin = preference[None, :] * (a - b)
    return -F.logsigmoid(beta * margin)[:, decided].mean()


def sample_trajectory(model: Any, text: Any, trainer: Any, timesteps: Any, shape: tuple, generator: Any) -> list:
    """States [x_{t_0}, ..., x_{t_{S-1}}, x̂₀] of the Gaussian few-step sampler under the current model, no gradient."""
    import torch

    device = text.hidden_states.device
    abar = trainer.noise_scheduler.alphas_cumprod
    states = [torch.randn(shape, generator=generator).to(device)]
    with torch.no_grad():
        for k, t in enumerate(timesteps.tolist()):
            t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
            prediction = denoise(model, states[-1], t_batch, text, trainer.denoiser_kind)
            x0 = predicted_x0(abar, states[-1], prediction, t_batch, trainer.prediction_type)
            if k + 1 < len(timesteps):
                a_next = float(abar[int(timesteps[k + 1])])
                noise = torch.randn(shape, generator=generator).to(device)
                states.append(math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * noise)
            else:
                states.append(x0)
    return states


def decode_images(trainer: Any, latents: Any) -> Any:
    """VAE-decoded images in [0, 1]."""
    import torch

    vae = trainer.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor + shift).sample
    return ((images.float() + 1) / 2).clamp(0, 1)
