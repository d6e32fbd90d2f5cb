"""One PSO step. Offline: pair each target image with a random reference sample under the same ε and the same t
drawn from the distilled timesteps, and compute the chosen loss from the per-sample denoising errors. Online: two
trajectories per prompt from the current model, the reward's winner favoured (:mod:`.online`)."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from ftplugins.diffusion.sampling import few_step_sampler
from ftplugins.errors import FtpluginsError, UnsupportedModelError

from .losses import pso_db_loss, pso_loss
from .references import reference_set

STATE = "pso"


def begin(options: Any, run: Any, trainer: Any, resuming: bool) -> None:
    """At ``train_begin`` (initial weights, no optimizer): the distilled timesteps, the reference set (offline) or
    the scorer (online), and the reference model."""
    if not hasattr(trainer, "denoising_error"):
        raise FtpluginsError(f"pso trains a diffusers denoiser through DiffusionTrainer, not {type(trainer).__name__}")
    if trainer.prediction_type == "flow_matching":
        raise UnsupportedModelError(
            "pso supports DDPM-family denoisers (epsilon / v_prediction) with a few-step sampler; this run trains "
            "flow matching, whose distilled timesteps are not on the training grid; drop pso for this model.")
    seed = options.pso_seed if options.pso_seed is not None else trainer.args.seed
    sampler = few_step_sampler(trainer.noise_scheduler, options.pso_sampler, options.pso_sampling_steps)
    state = run.state.setdefault(STATE, {})
    state["timesteps"] = sampler.timesteps.round().long()
    state["seed"] = seed
    state["draws"] = (-1, 0)
    if options.pso_mode == "online":
        from .online import load_scorer

        if options.pso_sampling_steps < 2:
            raise FtpluginsError("pso_mode=online trains every sampling step but the last; pso_sampling_steps="
                                 f"{options.pso_sampling_steps} leaves none: use 2 or more.")
        state["scorer"] = load_scorer(options.pso_scorer)
        state["reference_model"] = reference_model(options, trainer.model)
        return
    state["references"] = reference_set(trainer, options, sampler, seed, resuming)
    if options.pso_loss == "pso":
        state["reference_model"] = reference_model(options, trainer.model)


def reference_model(options: Any, model: Any) -> Any:
    """The adapter-disabled denoiser (``disable_adapter``) or a frozen copy of the initial one."""
    adapted = hasattr(model, "disable_adapter")
    mode = options.pso_reference if options.pso_reference != "auto" else (
        "disable_adapter" if adapted else "frozen_copy")
    if mode == "disable_adapter":
        if not adapted:
            raise FtpluginsError("pso_reference=disable_adapter needs a PEFT adapter on the denoiser (an adapter "
                                 "plugin such as ssf, or peft); set pso_reference=frozen_copy for full fine-tuning.")
        return "disable_adapter"
    frozen = copy.deepcopy(model).requires_grad_(False).eval()
    return frozen


def micro_batch_generator(state: dict, step: int, rank: int) -> Any:
    """A generator seeded by (seed, rank, optimizer step, micro-batch within it), so a resumed run draws what an
    uninterrupted one did."""
    import torch

    last_step, micro = state["draws"]
    micro = micro + 1 if last_step == step else 0
    state["draws"] = (step, micro)
    return torch.Generator().manual_seed(hash((state["seed"], rank, step, micro)) & 0x7FFF_FFFF)


def draw_pairing(state: dict, step: int, rank: int, batch: int) -> tuple[Any, Any, Any]:
    """(reference indices, noise, timesteps) of one micro-batch; timesteps come from the distilled set."""
    import torch

    generator = micro_batch_generator(state, step, rank)
    references, timesteps = state["references"], state["timesteps"]
    index = torch.randint(len(references), (batch,), generator=generator)
    noise = torch.randn((batch, *references.shape[1:]), generator=generator)
    t = timesteps[torch.randint(len(timesteps), (batch,), generator=generator)]
    return index, noise, t


def step_loss(options: Any, run: Any, trainer: Any, model: Any, inputs: dict, return_outputs: bool):
    import torch

    state = run.state.get(STATE)
    if state is None:
        raise FtpluginsError("pso: compute_loss before train_begin; call trainer.train() (or run the train_begin "
                             "hook) first.")
    if options.pso_mode == "online":
        return online_step_loss(options, state, trainer, model, inputs, return_outputs)
    positives = trainer.latents_of(inputs)
    batch, device = positives.shape[0], positives.device
    index, noise, t = draw_pairing(state, trainer.state.global_step, trainer.args.process_index, batch)
    negatives = state["references"][index.to(state["references"].device)].to(device, positives.dtype)
    noise, t = noise.to(device, positives.dtype), t.to(device)
    state["last_timesteps"] = t
    both, noise2, t2 = torch.cat([positives, negatives]), torch.cat([noise, noise]), torch.cat([t, t])
    text = trainer.encode_prompts(inputs["input_ids"]).repeat(2)  # both under the instance prompt
    e_pos, e_neg = trainer.denoising_error(model, both, noise2, t2, text).chunk(2)
    if options.pso_loss == "pso_db":
        loss, margin = pso_db_loss(e_pos, e_neg, options.pso_beta, options.pso_neg_factor,
                                   options.pso_db_reference_weight)
    else:
        reference = state["reference_model"]
        with torch.no_grad(), _reference(reference, model) as ref_model:
            ref_pos, ref_neg = trainer.denoising_error(ref_model, both, noise2, t2, text).chunk(2)
        loss, margin = pso_loss(e_pos, e_neg, ref_pos, ref_neg, options.pso_beta, options.pso_neg_factor)
    state["last"] = {"margin": margin.detach(), "error_target": e_pos.detach(), "error_reference": e_neg.detach()}
    return (loss, {"pso_margin": margin.detach()}) if return_outputs else loss


@contextlib.contextmanager
def _reference(reference: Any, model: Any):
    if reference != "disable_adapter":
        yield reference
        return
    peft_model = model
    while not hasattr(peft_model, "disable_adapter") and hasattr(peft_model, "module"):
        peft_model = peft_model.module  # DDP: run the reference outside the wrapper (no gradient sync)
    with peft_model.disable_adapter():
        yield peft_model


def online_step_loss(options: Any, state: dict, trainer: Any, model: Any, inputs: dict, return_outputs: bool):
    """Two trajectories per prompt from the current model, the scorer's Pareto winner, the clipped per-step
    log-ratio loss over every step but the last (:mod:`.online`)."""
    import torch

    from ftplugins.diffusion.denoiser import denoise

    from .online import (decode_images, gaussian_log_ratio, online_pso_loss, pareto_preference, predicted_x0,
                         sample_trajectory)

    ids = inputs["input_ids"]
    batch = ids.shape[0]
    prompts = trainer.tokenizer.batch_decode(ids, skip_special_tokens=True)
    text = trainer.encode_prompts(ids).repeat(2)  # rows [0, B) trajectory a, [B, 2B) trajectory b of each prompt
    generator = micro_batch_generator(state, trainer.state.global_step, trainer.args.process_index)
    timesteps = state["timesteps"]
    states = sample_trajectory(model, text, trainer, timesteps, (2 * batch, *trainer.latent_shape()), generator)
    scores = torch.as_tensor(state["scorer"](decode_images(trainer, states[-1]), prompts * 2), dtype=torch.float32)
    if scores.shape[0] != 2 * batch:
        raise FtpluginsError(f"pso_scorer returned {tuple(scores.shape)} scores for {2 * batch} images; return one "
                             "score (or one row of rewards) per image.")
    preference = pareto_preference(scores[:batch], scores[batch:]).to(states[0].device)
    abar = trainer.noise_scheduler.alphas_cumprod
    ratios = []
    for k in range(len(timesteps) - 1):  # the last step (x̂₀, deterministic) is not trained
        t = torch.full((2 * batch,), int(timesteps[k]), device=states[k].device, dtype=torch.long)
        x0_theta = predicted_x0(abar, states[k], denoise(model, states[k], t, text, trainer.denoiser_kind), t,
                                trainer.prediction_type)
        with torch.no_grad(), _reference(state["reference_model"], model) as ref_model:
            x0_ref = predicted_x0(abar, states[k], denoise(ref_model, states[k], t, text, trainer.denoiser_kind), t,
                                  trainer.prediction_type)
        ratios.append(gaussian_log_ratio(states[k + 1], x0_theta, x0_ref, float(abar[int(timesteps[k + 1])])))
    log_ratio = torch.stack(ratios)  # [trained steps, 2B]
    loss = online_pso_loss(log_ratio[:, :batch], log_ratio[:, batch:], preference, options.pso_beta, options.pso_clip)
    state["last"] = {"preference": preference, "log_ratio": log_ratio.detach(), "scores": scores}
    return (loss, {"pso_preference": preference}) if return_outputs else loss
