"""Image + mask rows → (pixel_values, labels) batches, each row checked: one line names the row and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ftplugins.errors import FtpluginsError


def rename_columns(dataset: Any, image_column: str, mask_column: str) -> Any:
    """The model's forward takes ``pixel_values`` / ``labels``; the Trainer drops columns its forward does not name,
    so the image and mask columns are renamed before it sees the dataset."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        raise FtpluginsError(f"samda: the dataset is a {type(dataset).__name__}; expected a datasets.Dataset with "
                             f"{image_column!r} and {mask_column!r} columns.")
    missing = [c for c in (image_column, mask_column) if c not in names]
    if missing:
        raise FtpluginsError(f"samda: the dataset has no column {missing[0]!r} (columns: {', '.join(names)}); name "
                             "yours with --samda_image_column / --samda_mask_column.")
    renames = {image_column: "pixel_values", mask_column: "labels"}
    return dataset.rename_columns({k: v for k, v in renames.items() if k != v})


def image_tensor(image: Any) -> torch.Tensor:
    """(C, H, W) float32 from an array / tensor (C, H, W) or (H, W), or a PIL image (scaled to [0, 1])."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    tensor = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor


class SegmentationCollator:
    """Stacks rows of ``pixel_values`` and ``labels``; a mask that does not fit its image or holds a class index
    outside 0..K-1 stops the run with the row's index."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images, masks = [], []
        for i, row in enumerate(rows):
            image = image_tensor(row["pixel_values"])
            mask = torch.as_tensor(np.asarray(row["labels"]))
            if mask.dim() != 2 or tuple(mask.shape) != tuple(image.shape[-2:]):
                raise FtpluginsError(f"samda: row {i} of the batch: mask shape {tuple(mask.shape)} does not match its "
                                     f"image's (H, W) {tuple(image.shape[-2:])}; give each image a mask of one class "
                                     "index per pixel.")
            if mask.is_floating_point() and not torch.equal(mask, mask.round()):
                raise FtpluginsError(f"samda: row {i} of the batch: the mask holds non-integer values; expected class "
                                     f"indices 0..{self.num_classes - 1}.")
            low, high = int(mask.min()), int(mask.max())
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                raise FtpluginsError(f"samda: row {i} of the batch: mask label {bad} is out of range; expected class "
                                     f"indices 0..{self.num_classes - 1} (the expert's {self.num_classes} output "
                                     "channels): relabel the mask or build the expert with more out_channels.")
            images.append(image)
            masks.append(mask.long())
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) > 1:
            raise FtpluginsError(f"samda: images of one batch differ in shape {sorted(shapes)}; resize them to one "
                                 "size (the expert's sample_size).")
        return {"pixel_values": torch.stack(images), "labels": torch.stack(masks)}
