"""``ftplugins augment gan --images FOLDER``: an image folder in, the same layout plus synthetic images out.

The input is the usual image-classification layout (``FOLDER/<class>/<image files>``, as ``datasets``' imagefolder
reads it); the class is the subfolder's name. The output folder has the same layout: every real image copied byte
for byte, the synthetic ones as ``<class>/gan-synthetic-NNNNN.png``, and ``metadata.jsonl`` (``file_name``,
``label``, ``synthetic``) so ``load_dataset("imagefolder", data_dir=OUT)`` sees the marker. The folder appears
whole (staged, then renamed into place, replacing an earlier output).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from ftplugins.atomic import folder_replaced_whole, write_rows_and_report
from ftplugins.errors import FtpluginsError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MODES = {"1": "L", "P": "RGB", "L": "L", "RGB": "RGB", "RGBA": "RGBA"}  # what each PIL mode is read as
SYNTHETIC_PREFIX = "gan-synthetic-"
REPORT = "gan_augment_report.json"


def read_image_folder(folder: str) -> tuple[Any, list[str]]:
    """``(dataset with columns image, label; each image's path relative to folder)``."""
    from datasets import Dataset
    from PIL import Image

    if not os.path.isdir(folder):
        raise FtpluginsError(f"--images {folder}: no such folder; expected FOLDER/<class>/<image files>.")
    classes = sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)) and e[0] != ".")
    images, labels, files = [], [], []
    for label in classes:
        for name in sorted(os.listdir(os.path.join(folder, label))):
            if os.path.splitext(name)[1].lower() not in EXTENSIONS:
                continue
            if name.startswith(SYNTHETIC_PREFIX):
                raise FtpluginsError(f"--images {folder}: {label}/{name} looks synthetic already (its name starts "
                                     f"with {SYNTHETIC_PREFIX!r}); augment a folder of real images only.")
            with Image.open(os.path.join(folder, label, name)) as image:
                if image.mode not in MODES:
                    raise FtpluginsError(f"--images {folder}: {label}/{name} is a {image.mode!r} image; convert the "
                                         "images to greyscale (L), RGB or RGBA 8-bit first.")
                images.append(np.asarray(image.convert(MODES[image.mode])))
            labels.append(label)
            files.append(f"{label}/{name}")
    if not images:
        raise FtpluginsError(f"--images {folder}: no images found; expected one subfolder per class holding "
                             f"{', '.join(EXTENSIONS)} files.")
    odd = next((i for i, image in enumerate(images) if image.shape != images[0].shape), None)
    if odd is not None:
        raise FtpluginsError(f"--images {folder}: the images differ in shape ({files[0]} {images[0].shape}, "
                             f"{files[odd]} {images[odd].shape}); resize / convert them to one size and mode first "
                             "(the GAN models a fixed number of pixels).")
    return Dataset.from_dict({"image": images, "label": labels}), files


def _check_output(folder: str, output: str) -> None:
    source, target = os.path.realpath(folder), os.path.realpath(output)
    if target == source or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        raise FtpluginsError(f"-o {output}: it overlaps the input folder --images {folder}; write the augmented "
                             "folder elsewhere (it replaces whatever is at -o).")
    if os.path.isfile(output):
        raise FtpluginsError(f"-o {output}: a file; with --images the output is a folder (one subfolder per class).")


def write_image_folder(folder: str, files: list[str], augmented: Any, report: dict, output: str,
                       marker: str = "synthetic") -> int:
    """Real images copied from ``folder``, synthetic ones written as PNG, ``metadata.jsonl`` and the report, into
    ``output`` at once; returns the number of synthetic images."""
    from PIL import Image

    with folder_replaced_whole(output, "images") as staged:
        rows, count = [], 0
        for i, row in enumerate(augmented):
            if not row[marker]:
                rel = files[i]  # the real rows come first, in read order
                os.makedirs(os.path.join(staged, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(os.path.join(folder, rel), os.path.join(staged, rel))
            else:
                rel = f"{row['label']}/{SYNTHETIC_PREFIX}{count:05d}.png"
                count += 1
                pixels = np.clip(np.asarray(row["image"]), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(staged, rel))
            rows.append({"file_name": rel, "label": row["label"], "synthetic": bool(row[marker])})
        write_rows_and_report(staged, rows, "metadata.jsonl", report, REPORT)
    return count


def augment_image_folder(folder: str, output: str, opts: Any) -> dict:
    """Read ``folder``, augment it with ``opts`` (its image column set to ``image``), write ``output``; the report."""
    import dataclasses

    from .tabular import augment

    _check_output(folder, output)
    dataset, files = read_image_folder(folder)
    opts = dataclasses.replace(opts, gan_augment_image_column="image", gan_augment_label_column="label")
    augmented, report = augment(dataset, opts, what=f"--images {folder}")
    report = {**report, "images": folder, "output": output, "layout": "OUTPUT/<class>/<file>, metadata.jsonl"}
    write_image_folder(folder, files, augmented, report, output, opts.gan_augment_marker_column)
    return report
