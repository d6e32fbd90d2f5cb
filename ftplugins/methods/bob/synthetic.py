"""``generate_synthetic``: a labelled image-folder dataset from a BOB-fine-tuned text-to-image pipeline.

Writes ``OUT/metadata.jsonl`` (``file_name``, ``label``, ``prompt``, ``attributes``) beside ``OUT/images/<class>/
NNNNN.png`` — ``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads it — and ``OUT/bob_report.json``
(settings, per-class counts, the attribute counts per class, how many prompts coincide with a fine-tuning
caption). The folder appears whole or not at all (:func:`ftplugins.atomic.replace_dir`).

Image ``i`` is drawn with its own generator seeded by (seed, i), so the dataset does not depend on the batch size.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from ftplugins.errors import FtpluginsError

from .attributes import AttributePool
from .marginal import plan_prompts

REPORT = "bob_report.json"
METADATA = "metadata.jsonl"


def generate_synthetic(pipeline: Any, pool: Any, output_dir: str, per_class: int, classes: list[str] | None = None,
                       marginalize: str = "pool", seed: int = 0, num_inference_steps: int = 4,
                       guidance_scale: float = 0.0, batch_size: int = 8, overwrite: bool = False) -> dict[str, Any]:
    """Generate ``per_class`` images for each class with ``pipeline`` (a diffusers text-to-image pipeline, or any
    callable ``pipeline(prompt=[...], num_inference_steps=, guidance_scale=, generator=[...])`` returning
    ``.images``); ``pool`` is an :class:`AttributePool` or the path of a run's folder / ``bob_attributes.json``.
    Returns the report."""
    import torch

    pool = pool if isinstance(pool, AttributePool) else AttributePool.load(pool)
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FtpluginsError(f"{output_dir} is not empty; choose a new folder or pass overwrite=True "
                             "(--overwrite) to replace it.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FtpluginsError(f"{output_dir} is a file; choose a folder for the synthetic dataset.")
    plan = plan_prompts(pool, per_class, classes, marginalize, seed)
    from ftplugins.atomic import folder_replaced_whole, write_rows_and_report

    with folder_replaced_whole(output_dir, "bob-synthetic") as staged:
        rows = []
        for start in range(0, len(plan), batch_size):
            chunk = plan[start:start + batch_size]
            generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
            images = pipeline(prompt=[p["prompt"] for p in chunk], num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, generator=generators).images
            if len(images) != len(chunk):
                raise FtpluginsError(f"the pipeline returned {len(images)} images for {len(chunk)} prompts.")
            for offset, (item, image) in enumerate(zip(chunk, images)):
                name = os.path.join("images", slug(item["label"]), f"{start + offset:05d}.png")
                os.makedirs(os.path.dirname(os.path.join(staged, name)), exist_ok=True)
                image.save(os.path.join(staged, name))
                rows.append({"file_name": name, "label": item["label"], "prompt": item["prompt"],
                             "attributes": item["attributes"]})
        report = describe(pool, plan, marginalize, seed, num_inference_steps, guidance_scale, pipeline)
        write_rows_and_report(staged, rows, METADATA, report, REPORT, indent=1)
    return report


def slug(name: str) -> str:
    """A folder name for a class name ("red square" -> "red_square")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def describe(pool: AttributePool, plan: list[dict[str, Any]], marginalize: str, seed: int, steps: int,
             guidance: float, pipeline: Any) -> dict[str, Any]:
    """The report: settings, counts per class and the attribute counts per class (equal across classes by
    construction), the pool's own counts for comparison, and coincidences with fine-tuning captions."""
    per_class = Counter(p["label"] for p in plan)
    attribute_counts = {a: {c: dict(Counter(p["attributes"][a] for p in plan if p["label"] == c)) for c in per_class}
                        for a in pool.attributes}
    real = {a: {c: dict(Counter(r["attributes"][a] for r in pool.rows if r["class"] == c))
                for c in sorted({r["class"] for r in pool.rows})} for a in pool.attributes}
    finetuning = set(pool.captions())
    return {
        "images": len(plan), "per_class": dict(per_class), "template": pool.template, "marginalize": marginalize,
        "seed": seed, "num_inference_steps": steps, "guidance_scale": guidance,
        "pipeline": type(pipeline).__name__, "real_images": len(pool.rows),
        "attribute_counts_synthetic": attribute_counts, "attribute_counts_real": real,
        # A prompt equals a fine-tuning caption when slot k drew the attributes of a real image of the same class;
        # suppressing those would make the attributes depend on the class, which marginalising forbids.
        "prompts_equal_to_a_finetuning_caption": sum(p["prompt"] in finetuning for p in plan),
    }
