"""One PSO step: pair each target image with a random reference sample under the same ε and the same t drawn
from the distilled timesteps, and compute the chosen loss from the per-sample denoising errors."""

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
    """At ``train_begin`` (initial weights, no optimizer): the distilled timesteps, the reference set, and the
    reference model of the ``pso`` loss."""
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
    state["references"] = reference_set(trainer, options, sampler, seed, resuming)
    state["draws"] = (-1, 0)
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


def draw_pairing(state: dict, step: int, rank: int, batch: int) -> tuple[Any, Any, Any]:
    """(reference indices, noise, timesteps) of one micro-batch from a generator seeded by (seed, rank, step,
    micro-batch), so a resumed run draws what an uninterrupted one did. Timesteps come from the distilled set."""
    import torch

    last_step, micro = state["draws"]
    micro = micro + 1 if last_step == step else 0
    state["draws"] = (step, micro)
    generator = torch.Generator().manual_seed(hash((state["seed"], rank, step, micro)) & 0x7FFF_FFFF)
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
