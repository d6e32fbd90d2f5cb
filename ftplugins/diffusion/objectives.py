"""The standard denoising objectives: noisy input and regression target for ε-, v- and flow-matching prediction.

Pure functions of (scheduler, clean latents x₀, noise ε, timesteps t), so tests can compute the loss by hand and
methods (PSO) can pair two images under the same ε and t:

* ``epsilon``:       x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε, target ε (DDPM);
* ``v_prediction``:  same x_t, target v = √ᾱ_t ε - √(1-ᾱ_t) x₀ (Salimans & Ho 2022);
* ``sample``:        same x_t, target x₀;
* ``flow_matching``: x_t = (1-σ_t) x₀ + σ_t ε, target ε - x₀ (rectified flow, SD3), σ_t read from the scheduler.

The first three use the scheduler's own ``add_noise`` / ``get_velocity`` (diffusers' training scripts do the same).
"""

from __future__ import annotations

from typing import Any

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_matching")


def prediction_type_of(scheduler: Any, requested: str | None = None) -> str:
    """The objective to train: ``requested``, else flow matching for flow schedulers, else the scheduler's own."""
    if requested is not None:
        if requested not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {requested!r} is not one of {', '.join(PREDICTION_TYPES)}; "
                             "leave it unset to take the noise scheduler's own.")
        return requested
    if is_flow_scheduler(scheduler):
        return "flow_matching"
    return getattr(scheduler.config, "prediction_type", None) or "epsilon"


def is_flow_scheduler(scheduler: Any) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def sample_timesteps(scheduler: Any, batch: int, device: Any, generator: Any = None) -> Any:
    """Uniform training timesteps: integers in [0, T) for DDPM-style schedulers, the flow scheduler's own grid."""
    import torch

    steps = scheduler.config.num_train_timesteps
    index = torch.randint(0, steps, (batch,), device="cpu", generator=generator)
    if is_flow_scheduler(scheduler):
        return scheduler.timesteps[index].to(device)
    return index.to(device)


def flow_sigmas(scheduler: Any, timesteps: Any, ndim: int) -> Any:
    """σ_t of a flow scheduler for each of ``timesteps`` (which must be on its training grid), shaped to broadcast."""
    grid = scheduler.timesteps.to(timesteps.device)
    match = grid[None, :] == timesteps[:, None].to(grid.dtype)
    if not bool(match.any(dim=1).all()):
        raise ValueError("flow-matching timesteps must come from the noise scheduler's training grid "
                         "(noise_scheduler.timesteps before set_timesteps was called); got "
                         f"{timesteps.tolist()}")
    sigmas = scheduler.sigmas.to(timesteps.device)[match.float().argmax(dim=1)]
    return sigmas.reshape(-1, *([1] * (ndim - 1)))


def noisy_latents(scheduler: Any, latents: Any, noise: Any, timesteps: Any, prediction_type: str) -> Any:
    """x_t for clean ``latents``, ``noise`` and ``timesteps`` under ``prediction_type``'s forward process."""
    if prediction_type == "flow_matching":
        sigma = flow_sigmas(scheduler, timesteps, latents.ndim).to(latents.dtype)
        return (1.0 - sigma) * latents + sigma * noise
    return scheduler.add_noise(latents, noise, timesteps)


def regression_target(scheduler: Any, latents: Any, noise: Any, timesteps: Any, prediction_type: str) -> Any:
    """What the denoiser regresses onto at x_t."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    if prediction_type == "flow_matching":
        return noise - latents
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def per_sample_error(prediction: Any, target: Any) -> Any:
    """Mean squared error of each sample (a [batch] tensor), in float32 as diffusers' scripts compute it."""
    diff = prediction.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)
