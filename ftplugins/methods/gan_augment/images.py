"""Small images as GAN rows: each image's pixels flattened into one feature vector, synthetic ones shaped back.

The seed names "images and tabular rows"; its details are not public. Our choice: the same conditional MLP GAN over
the flattened pixels (standardised per pixel, as tabular features), the synthetic pixels clipped to the real
images' range and given the real images' dtype. An MLP over pixels suits small images (digits, icons, up to a few
thousand pixels); it is no image model for photographs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftplugins.errors import DatasetColumnsError, FtpluginsError

MAX_PIXELS = 16384


def image_matrix(dataset: Any, column: str, what: str) -> tuple[np.ndarray, dict]:
    """``(n, pixels)`` float64 and what :func:`to_column` needs to shape rows back (shape, dtype, range, PIL)."""
    if column not in dataset.features:
        raise DatasetColumnsError(f"{what}: no image column {column!r} (columns: {', '.join(dataset.features)}); "
                                  "name it with --gan_augment_image_column.")
    images = dataset[column]
    pil = bool(images) and hasattr(images[0], "convert") and hasattr(images[0], "size")
    arrays = [np.asarray(image) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise FtpluginsError(f"{what}: the images in {column!r} differ in shape {sorted(shapes)[:3]}; resize them to "
                             "one size first (the GAN models a fixed number of pixels).")
    shape = shapes.pop()
    size = int(np.prod(shape))
    if not arrays[0].dtype.kind in "uif" or size > MAX_PIXELS:
        raise FtpluginsError(f"{what}: {column!r} holds {arrays[0].dtype} images of shape {shape}; expected numeric "
                             f"images of at most {MAX_PIXELS} pixels (an MLP GAN over pixels is for small images).")
    x = np.stack(arrays).reshape(len(arrays), size).astype(np.float64)
    if not np.isfinite(x).all():
        raise FtpluginsError(f"{what}: non-finite pixels (NaN/inf) in {column!r}; fix or drop those images.")
    return x, {"shape": shape, "dtype": arrays[0].dtype, "low": float(x.min()), "high": float(x.max()), "pil": pil,
               "mode": getattr(images[0], "mode", None)}


def to_column(flat: np.ndarray, layout: dict) -> list:
    """Synthetic rows ``(m, pixels)`` as images like the real ones: same shape, dtype and value range."""
    pixels = np.clip(flat, layout["low"], layout["high"]).reshape(len(flat), *layout["shape"])
    if layout["dtype"].kind in "ui":
        pixels = np.rint(pixels)
    pixels = pixels.astype(layout["dtype"])
    if layout["pil"]:
        from PIL import Image

        return [Image.fromarray(image, mode=layout["mode"]) for image in pixels]
    return [image.tolist() for image in pixels]
