"""``ftplugins generate-synthetic``: a labelled image-folder dataset from a BOB-fine-tuned pipeline.

``--pipeline`` is a diffusers pipeline folder (``pipe.save_pretrained``); ``--unet`` replaces its denoiser with a
fine-tuned one (the output folder of a full fine-tuning run), ``--adapter`` loads an adapter onto it (any
ftplugins or PEFT adapter, ``ftplugins.load_adapter``). ``--attributes`` is the BOB run's output folder (or its
``bob_attributes.json``).
"""

from __future__ import annotations

import argparse
import json

from ftplugins.errors import FtpluginsError


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate-synthetic", help="write a labelled synthetic image-folder dataset from a "
                              "BOB-fine-tuned text-to-image pipeline (attributes marginalised out)")
    p.add_argument("--pipeline", required=True, help="diffusers pipeline folder")
    p.add_argument("--unet", default=None, help="fine-tuned denoiser folder that replaces the pipeline's unet")
    p.add_argument("--adapter", default=None, help="adapter folder loaded onto the pipeline's unet")
    p.add_argument("--attributes", required=True, help="the BOB run's output folder or its bob_attributes.json")
    p.add_argument("--out", required=True, help="new folder for the dataset")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: every class of the run)")
    p.add_argument("--marginalize", choices=("pool", "independent"), default="pool",
                   help="attributes of one real image of any class (pool), or each attribute on its own")
    p.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance scale (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_generate_synthetic)
    return p


def cmd_generate_synthetic(args: argparse.Namespace) -> None:
    from .attributes import AttributePool
    from .synthetic import generate_synthetic

    if args.unet and args.adapter:
        raise FtpluginsError("ftplugins generate-synthetic: give --unet (a fully fine-tuned denoiser) or --adapter "
                             "(an adapter for the pipeline's own unet), not both.")
    pool = AttributePool.load(args.attributes)  # before loading any model: a wrong folder fails at once
    pipeline = load_pipeline(args.pipeline, args.unet, args.adapter)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    report = generate_synthetic(pipeline, pool, args.out, args.per_class, classes=classes,
                                marginalize=args.marginalize, seed=args.seed, num_inference_steps=args.steps,
                                guidance_scale=args.guidance, batch_size=args.batch_size, overwrite=args.overwrite)
    print(json.dumps({k: report[k] for k in ("images", "per_class", "marginalize",
                                             "prompts_equal_to_a_finetuning_caption")}))
    print(f"wrote {args.out} (metadata.jsonl, images/, bob_report.json)")


def load_pipeline(folder: str, unet: str | None, adapter: str | None):
    import os

    from diffusers import DiffusionPipeline

    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FtpluginsError(f"--pipeline {folder}: no model_index.json there; pass a diffusers pipeline folder "
                             "(pipe.save_pretrained(DIR)).")
    pipeline = DiffusionPipeline.from_pretrained(folder)
    if unet is not None:
        from diffusers import UNet2DConditionModel

        pipeline.unet = UNet2DConditionModel.from_pretrained(unet)
    if adapter is not None:
        from ftplugins.peft_types import load_adapter

        pipeline.unet = load_adapter(pipeline.unet, adapter)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
