"""Batches of (image, caption) rows for :class:`~ftplugins.diffusion.DiffusionTrainer`.

Images (PIL, file paths, or ``datasets.Image`` rows) are converted to RGB, resized to ``resolution`` (shorter side,
then centre crop, as diffusers' ``train_text_to_image.py``) and scaled to [-1, 1]; captions are tokenized to the
tokenizer's ``model_max_length``. Rows that carry cached VAE moments (``latent_moments``, see
:mod:`ftplugins.diffusion.latents`) pass them on instead of pixels.
"""

from __future__ import annotations

from typing import Any

from ftplugins.errors import FtpluginsError

LATENT_COLUMN = "latent_moments"


class ImageCaptionCollator:
    def __init__(self, tokenizer: Any, resolution: int, image_column: str = "image", caption_column: str = "caption",
                 max_length: int | None = None):
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.image_column = image_column
        self.caption_column = caption_column
        self.max_length = max_length or min(int(getattr(tokenizer, "model_max_length", 77) or 77), 77)

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        import torch

        missing = [i for i, row in enumerate(rows) if not isinstance(row.get(self.caption_column), str)]
        if missing:
            raise FtpluginsError(f"rows {missing} of the batch have no text in column {self.caption_column!r} "
                                 f"(columns: {sorted(rows[missing[0]])}); set caption_column to the caption column.")
        batch = {"input_ids": self.tokenize([row[self.caption_column] for row in rows])}
        if all(LATENT_COLUMN in row for row in rows):
            batch[LATENT_COLUMN] = torch.stack([torch.as_tensor(row[LATENT_COLUMN]) for row in rows]).float()
        elif self.image_column:  # '' = prompt-only rows
            batch["pixel_values"] = torch.stack([self.pixels(row, i) for i, row in enumerate(rows)])
        return batch

    def tokenize(self, captions: list[str]) -> Any:
        return self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt").input_ids

    def pixels(self, row: dict, index: int) -> Any:
        return image_to_tensor(load_image(row.get(self.image_column), self.image_column, index), self.resolution)


def load_image(value: Any, column: str, index: int) -> Any:
    """A PIL RGB image from a PIL image, a path, or a ``datasets.Image`` dict; a clear error otherwise."""
    import io

    from PIL import Image

    try:
        if isinstance(value, dict):  # datasets.Image without decoding: {"bytes": ..., "path": ...}
            value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value.get("path")
        if isinstance(value, str):
            value = Image.open(value)
        if isinstance(value, Image.Image):
            return value.convert("RGB")
    except (OSError, KeyError) as exc:
        raise FtpluginsError(f"row {index}: the image in column {column!r} cannot be read ({exc}); "
                             "fix or drop that row.") from None
    raise FtpluginsError(f"row {index}: column {column!r} holds {type(value).__name__}, not an image; "
                         "set image_column to the column of images (PIL images or file paths).")


def image_to_tensor(image: Any, resolution: int) -> Any:
    """[3, resolution, resolution] in [-1, 1]: resize the shorter side, centre crop (diffusers' transforms)."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = image.size
    scale = resolution / min(width, height)
    if scale != 1:
        image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                             Image.BILINEAR)
    width, height = image.size
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return array / 127.5 - 1.0
