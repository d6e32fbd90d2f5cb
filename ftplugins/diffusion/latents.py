"""Caching the VAE's latent distributions once (diffusers' ``--cache_latents``), with a progress bar.

Each image's diagonal-Gaussian moments (mean and log-variance, the VAE encoder's raw output) are stored in the
``latent_moments`` column and the image column is dropped; training then samples latents from them each step,
exactly as it would from a fresh encoding, without running the VAE encoder again.
"""

from __future__ import annotations

from typing import Any

from .collator import LATENT_COLUMN, ImageCaptionCollator


def cache_latents(dataset: Any, vae: Any, collator: ImageCaptionCollator, batch_size: int = 8, device: Any = None):
    """``dataset`` with a ``latent_moments`` column in place of its images."""
    import torch
    from tqdm.auto import tqdm

    if LATENT_COLUMN in dataset.column_names:
        return dataset
    device = device or next(vae.parameters()).device
    moments = []
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc="Caching VAE latents", unit="batch"):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            pixels = torch.stack([collator.pixels(row, start + i) for i, row in enumerate(rows)])
            encoded = vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist.parameters
            moments.extend(encoded.float().cpu().numpy())
    dataset = dataset.remove_columns([collator.image_column])
    return dataset.add_column(LATENT_COLUMN, [m.tolist() for m in moments])
