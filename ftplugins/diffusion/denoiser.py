"""Calling a diffusers denoiser whatever its kind: UNets take ``(sample, timestep, encoder_hidden_states)``,
MM-DiT transformers (SD3, Flux-like) ``(hidden_states, encoder_hidden_states, pooled_projections, timestep)``.

The trainer, the sampler and methods (PSO) call :func:`denoise`, so a new denoiser kind is one branch here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ftplugins.errors import UnsupportedModelError


@dataclass
class TextConditioning:
    """The frozen text encoder's output for a batch of captions."""

    hidden_states: Any  # [batch, tokens, width]: cross-attention input
    pooled: Any  # [batch, width]: the pooled / projected embedding (transformer denoisers' ``pooled_projections``)

    def repeat(self, times: int) -> TextConditioning:
        """The conditioning of a batch repeated ``times`` (a pair of images under one caption)."""
        return TextConditioning(self.hidden_states.repeat(times, 1, 1),
                                None if self.pooled is None else self.pooled.repeat(times, 1))


def base_denoiser(model: Any) -> Any:
    """The diffusers model under DDP / PEFT wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        if inner is None or inner is model:
            return model
        model = inner


def denoiser_kind(model: Any) -> str:
    """``"unet"`` or ``"transformer"``; anything else is refused, naming the model type and what was expected."""
    forward = inspect.signature(base_denoiser(model).forward).parameters
    if {"sample", "timestep", "encoder_hidden_states"} <= set(forward):
        return "unet"
    if {"hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"} <= set(forward):
        return "transformer"
    raise UnsupportedModelError(
        f"{type(base_denoiser(model)).__name__} is not a diffusers denoiser: its forward takes "
        f"({', '.join(forward)}), expected a UNet2DConditionModel-like (sample, timestep, encoder_hidden_states) or "
        "an SD3Transformer2DModel-like (hidden_states, encoder_hidden_states, pooled_projections, timestep); "
        "pass the pipeline's unet / transformer as model=."
    )


def denoise(model: Any, noisy: Any, timesteps: Any, text: TextConditioning, kind: str | None = None) -> Any:
    """The denoiser's prediction at ``noisy`` (x_t) and ``timesteps`` under ``text``."""
    kind = kind or denoiser_kind(model)
    if kind == "unet":
        return model(noisy, timesteps, encoder_hidden_states=text.hidden_states, return_dict=False)[0]
    if text.pooled is None:
        raise UnsupportedModelError(
            "a transformer denoiser needs a pooled text embedding (pooled_projections); use a text encoder that "
            "returns text_embeds (CLIPTextModelWithProjection) or pooler_output.")
    return model(hidden_states=noisy, encoder_hidden_states=text.hidden_states, pooled_projections=text.pooled,
                 timestep=timesteps, return_dict=False)[0]


def encode_text(text_encoder: Any, input_ids: Any) -> TextConditioning:
    """Run the frozen text encoder (no gradient): hidden states for cross-attention, the pooled embedding."""
    import torch

    with torch.no_grad():
        out = text_encoder(input_ids=input_ids)
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = getattr(out, "pooler_output", None)
    return TextConditioning(out.last_hidden_state, pooled)
