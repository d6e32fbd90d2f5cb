"""Few-step sampling with a diffusers scheduler, for any denoiser kind (PSO's reference set, checks of a run).

The loop of diffusers' pipelines without classifier-free guidance (guidance 0, as timestep-distilled models
sample): x_T ~ N(0, σ_init² I), then ``scheduler.step`` at each of its timesteps. It stays in latent space.
"""

from __future__ import annotations

from typing import Any

from .denoiser import TextConditioning, denoise


def few_step_sampler(noise_scheduler: Any, kind: str = "euler", steps: int = 4) -> Any:
    """A sampler built from the training scheduler's config with trailing timesteps (what SDXL-Turbo / LCM / DMD2
    sample with: 999, 749, 499, 249 at 4 steps), ``set_timesteps(steps)`` done."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    cls = {"euler": EulerDiscreteScheduler, "lcm": LCMScheduler, "ddim": DDIMScheduler}[kind]
    sampler = cls.from_config(noise_scheduler.config, timestep_spacing="trailing")
    sampler.set_timesteps(steps)
    return sampler


def sample_latents(model: Any, text: TextConditioning, sampler: Any, shape: tuple[int, ...], generator: Any,
                   kind: str | None = None) -> Any:
    """Latents sampled by ``model`` under ``text`` with ``sampler`` (its timesteps already set); no gradient.

    ``sampler`` itself is left untouched: diffusers' samplers count their steps (``EulerDiscreteScheduler``'s step
    index), so the loop runs on a copy and the same sampler can draw any number of batches (PSO's reference set).
    """
    import copy

    import torch

    sampler = copy.deepcopy(sampler)
    device = text.hidden_states.device
    # The schedulers count their steps (step_index): start the schedule afresh, or a second call with the same
    # sampler (another batch) would step past its end.
    sampler.set_timesteps(sampler.num_inference_steps)
    latents = torch.randn(shape, generator=generator).to(device) * sampler.init_noise_sigma
    with torch.no_grad():
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(latents, t)
            prediction = denoise(model, model_input, t.to(device).expand(shape[0]), text, kind)
            latents = sampler.step(prediction, t, latents, generator=generator, return_dict=False)[0]
    return latents
