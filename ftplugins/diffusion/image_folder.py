"""Image + caption training data: an image folder (diffusers' ``train_text_to_image.py`` conventions: images beside a
``metadata.jsonl`` / ``metadata.csv`` whose ``file_name`` column names each image, plus a caption column, read by
``datasets``' ``imagefolder`` builder) or any ``datasets`` image + caption dataset (a Hub id, a folder it loads,
or one saved with ``save_to_disk``).

An image folder is checked whole before training, so a missing or unreadable image, an image without a caption or
a caption without an image is one line naming the file, not a traceback at some later step.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any

from ftplugins.errors import FtpluginsError

METADATA = ("metadata.jsonl", "metadata.csv")

logger = logging.getLogger("ftplugins")


def load_image_caption_dataset(name: str, config: str | None = None, split: str = "train",
                               caption_column: str = "caption", image_column: str = "image",
                               resolution: int | None = None) -> Any:
    """The ``split`` of ``name``: an image folder (checked by :func:`check_image_folder`), a dataset saved with
    ``save_to_disk``, or anything ``datasets.load_dataset`` reads."""
    import datasets

    if os.path.isdir(name) and is_image_folder(name):
        check_image_folder(name, caption_column, resolution)
        loaded = datasets.load_dataset("imagefolder", data_dir=name)
    elif any(os.path.isfile(os.path.join(name, saved)) for saved in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name, name=config)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise FtpluginsError(f"dataset {name!r} has no split {split!r} (it has: {', '.join(loaded)}); set "
                                 "--dataset_train_split.")
        loaded = loaded[split]
    return loaded


def is_image_folder(folder: str) -> bool:
    """A folder with a metadata file or image files (at its top or in split subfolders), not a saved dataset."""
    for root, _dirs, names in os.walk(folder):
        if any(n in METADATA or _is_image(n) for n in names):
            return True
    return False


def check_image_folder(folder: str, caption_column: str = "caption", resolution: int | None = None) -> int:
    """Refuse, in one line, an image folder that ``imagefolder`` would load wrongly or a later step would trip on;
    returns the number of images. Images smaller than ``resolution`` are upscaled (as diffusers does): a warning."""
    from PIL import Image, UnidentifiedImageError

    images = {os.path.normpath(os.path.join(root, n)) for root, _dirs, names in os.walk(folder) for n in names
              if _is_image(n)}
    metadata = [os.path.join(root, n) for root, _dirs, names in os.walk(folder) for n in names if n in METADATA]
    if not metadata:
        raise FtpluginsError(
            f"image folder {folder!r} has no metadata.jsonl: every image needs a caption, one JSON line per image "
            f"({{\"file_name\": \"0001.png\", \"{caption_column}\": \"a photo of ...\"}}), as in diffusers' "
            "train_text_to_image.py.")
    captioned: set[str] = set()
    small: list[str] = []
    for path in metadata:
        for line, row in _metadata_rows(path):
            where = f"{path} line {line}"
            file_name = row.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise FtpluginsError(f"{where}: no file_name (columns: {', '.join(row)}); each line names its "
                                     "image in file_name.")
            caption = row.get(caption_column)
            if not isinstance(caption, str) or not caption.strip():
                raise FtpluginsError(f"{where}: no caption in column {caption_column!r} for {file_name!r} (columns: "
                                     f"{', '.join(row)}); add it, or set --caption_column to the caption column.")
            image = os.path.normpath(os.path.join(os.path.dirname(path), file_name))
            if not os.path.isfile(image):
                raise FtpluginsError(f"{where}: the image {file_name!r} does not exist in {os.path.dirname(path)!r}; "
                                     "add it or remove its line.")
            try:
                with Image.open(image) as opened:
                    size = opened.size
                    opened.verify()
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                raise FtpluginsError(f"image {image!r} cannot be read ({exc}); fix it, or remove it and its "
                                     f"line in {path}.") from None
            if resolution and min(size) < resolution:
                small.append(file_name)
            captioned.add(image)
    uncaptioned = sorted(images - captioned)
    if uncaptioned:
        raise FtpluginsError(f"{len(uncaptioned)} image(s) of {folder!r} have no line in a metadata file, e.g. "
                             f"{uncaptioned[0]!r}; add their captions to metadata.jsonl or move them out.")
    if small:
        logger.warning(f"{len(small)} image(s) of {folder!r} are smaller than --resolution {resolution} (e.g. "
                       f"{small[0]!r}) and are upscaled; use larger images or a smaller --resolution.")
    return len(captioned)


def _metadata_rows(path: str):
    """(line number, row) of a metadata.jsonl / metadata.csv; a broken line is refused, naming it."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                yield line, row
        return
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FtpluginsError(f"{path} line {line}: not a JSON object ({exc.msg}); one JSON object per line."
                                     ) from None
            if not isinstance(row, dict):
                raise FtpluginsError(f"{path} line {line}: a JSON {type(row).__name__}, not an object; one "
                                     "{\"file_name\": ..., \"caption\": ...} per line.")
            yield line, row


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
