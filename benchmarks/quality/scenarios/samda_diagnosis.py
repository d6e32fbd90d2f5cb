"""Why ``samda-fewshot`` did not reproduce: probes of the features, a bigger adapter budget, more shots, a ceiling.

Added after ``samda-fewshot`` (samda-1 0.660 vs expert-1 0.663 Dice): same images, styles, cached generic encoder,
source expert recipe, target pool, test set and Dice as that scenario (its functions, same seeds), so its rows and
these are comparable. Each seed draws its k target images from the same 64-image pool with the same generator.
(a) Linear probes (a per-pixel logistic regression, full-batch Adam 1e-2, 300 steps, features standardised on the
probe's training pixels) on frozen features of k = 1 or 10 target images, Dice on the test images:
``probe-generic-k`` (the generic encoder's map, bilinearly upsampled to 32×32), ``probe-expert-k`` (the source
expert's last features, the input of its output conv, 32×32), ``probe-fused-k`` (both, concatenated): does the
generic branch carry target evidence the expert's own features lack at all? (b) Budget, 1 shot: ``expert-1`` /
``samda-1`` as in ``samda-fewshot`` (150 steps, lr 2e-3); ``-long`` variants at 600 steps; ``samda-1-adapter10x``
(150 steps, the adapter's lr ×10 = 2e-2, the rest 2e-3). (c) More shots: ``expert-30`` / ``samda-30`` (150 steps,
batch 4). Ceiling: ``expert-pool`` (the expert fine-tuned on the whole 64-image pool, 600 steps, batch 8): what
Dice the target's noise allows this expert. Shown, not judged: no claim rests on these rows.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality.scenarios import samda_fewshot as base
from benchmarks.quality.scenarios._common import Context, fit_full_batch, summarize_rows

NAME = "samda-diagnosis"
TITLE = "SAMDA diagnosis: linear probes of generic / expert / fused features, adapter budget, more shots, ceiling"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("dice",)
PROBE_SHOTS = (1, 10)

FULL = {**base.FULL, "long_steps": 600, "adapter_lr_scale": 10.0, "many_shots": 30, "pool_steps": 600,
        "pool_batch": 8, "probe_steps": 300, "probe_lr": 1e-2}
SMOKE = {**base.SMOKE, "long_steps": 3, "adapter_lr_scale": 10.0, "many_shots": 2, "pool_steps": 2, "pool_batch": 4,
         "probe_steps": 3, "probe_lr": 1e-2}


def expert_features(expert, images):
    """The source expert's last feature map (the input of ``conv_out``), (N, C, 32, 32)."""
    import torch

    seen = []
    handle = expert.conv_out.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    expert.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), 64):
                expert(images[i:i + 64], 0)
    finally:
        handle.remove()
    return torch.cat(seen)


def generic_map(encoder, images):
    """The generic encoder's feature map upsampled to the image size, (N, C, 32, 32)."""
    import torch
    import torch.nn.functional as F

    from ftplugins.methods.samda.model import generic_features

    with torch.no_grad():
        maps = torch.cat([generic_features(encoder, images[i:i + 64]) for i in range(0, len(images), 64)])
    return F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)


def probe_dice(train_x, train_y, test_x, test_y, steps: int, lr: float, seed: int) -> float:
    """Dice of a per-pixel logistic regression (a 1×1 conv) trained on ``train_x`` (N, C, H, W) → ``train_y``."""
    import torch

    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    torch.manual_seed(seed)
    probe = fit_full_batch(torch.nn.Conv2d(train_x.shape[1], 2, 1), (train_x - mean) / std, train_y, steps, lr)
    with torch.no_grad():
        pred = probe((test_x - mean) / std).argmax(1)
    return base.foreground_dice(pred, test_y)


def run(ctx: Context) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DModel

    from ftplugins.methods.samda.model import load_generic_encoder
    from ftplugins.methods.samda.tiny import tiny_segmentation_unet

    cfg = SMOKE if ctx.smoke else FULL
    encoder_dir = base.build_generic(cfg, ctx)
    source_masks = base.organelles(cfg["source_images"], seed=2000)
    source = base.rows(source_masks, base.render(source_masks, "source", seed=2001))
    torch.manual_seed(0)
    expert = base.train(tiny_segmentation_unet(num_classes=2, in_channels=1, size=base.SIZE), source, encoder_dir,
                        "none", cfg["source_steps"], cfg["source_lr"], cfg["source_batch"], seed=0).expert
    test_masks = base.organelles(cfg["test_images"], seed=3000)
    test_images = base.render(test_masks, "target", seed=3001)
    pool_masks = base.organelles(64, seed=4000)
    pool_images = base.render(pool_masks, "target", seed=4001)
    encoder = load_generic_encoder(encoder_dir).eval()
    features = {"generic": (generic_map(encoder, pool_images), generic_map(encoder, test_images)),
                "expert": (expert_features(expert, pool_images), expert_features(expert, test_images))}
    features["fused"] = tuple(torch.cat([features["generic"][i], features["expert"][i]], 1) for i in (0, 1))
    per_seed: dict[str, list[dict[str, Any]]] = {}

    def record(row: str, seed: int, model) -> None:
        score, share = base.dice(model, test_images, test_masks), base.adapter_share(model, test_images)
        per_seed.setdefault(row, []).append({"seed": seed, "dice": score, "adapter_share": share})
        ctx.log(f"[samda-diagnosis] seed {seed} {row}: dice {score:.3f}, adapter share {share:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        expert.save_pretrained(os.path.join(tmp, "expert"))

        def fine_tune(shots, fusion: str, steps: int, batch: int, seed: int, scale: float = 1.0):
            torch.manual_seed(seed)
            return base.train(UNet2DModel.from_pretrained(os.path.join(tmp, "expert")), shots, encoder_dir, fusion,
                              steps, cfg["ft_lr"], batch, seed, adapter_lr_scale=scale)

        for seed in ctx.seeds:
            pick = torch.randperm(len(pool_masks), generator=torch.Generator().manual_seed(seed))
            for k in PROBE_SHOTS:
                for kind, (pool_x, test_x) in features.items():
                    score = probe_dice(pool_x[pick[:k]], pool_masks[pick[:k]], test_x, test_masks,
                                       cfg["probe_steps"], cfg["probe_lr"], seed)
                    per_seed.setdefault(f"probe-{kind}-{k}", []).append({"seed": seed, "dice": score})
                    ctx.log(f"[samda-diagnosis] seed {seed} probe-{kind}-{k}: dice {score:.3f}")
            one = base.rows(pool_masks[pick[:1]], pool_images[pick[:1]])
            for row, fusion in (("expert-1", "none"), ("samda-1", "add")):
                record(row, seed, fine_tune(one, fusion, cfg["ft_steps"], 1, seed))
                record(f"{row}-long", seed, fine_tune(one, fusion, cfg["long_steps"], 1, seed))
            record("samda-1-adapter10x", seed, fine_tune(one, "add", cfg["ft_steps"], 1, seed,
                                                         cfg["adapter_lr_scale"]))
            k = cfg["many_shots"]
            many = base.rows(pool_masks[pick[:k]], pool_images[pick[:k]])
            for row, fusion in ((f"expert-{k}", "none"), (f"samda-{k}", "add")):
                record(row, seed, fine_tune(many, fusion, cfg["ft_steps"], min(k, 4), seed))
            pool = base.rows(pool_masks, pool_images)
            record("expert-pool", seed, fine_tune(pool, "none", cfg["pool_steps"], cfg["pool_batch"], seed))
    k = cfg["many_shots"]
    notes = {**{f"probe-{kind}-{n}": f"linear probe of the {what} on {n} target image(s)" for n in PROBE_SHOTS
                for kind, what in (("generic", "generic encoder's features"), ("expert", "source expert's features"),
                                   ("fused", "generic + expert features"))},
             "expert-1": f"the expert alone, 1 image, {cfg['ft_steps']} steps (as samda-fewshot)",
             "expert-1-long": f"the expert alone, 1 image, {cfg['long_steps']} steps",
             "samda-1": f"fused, 1 image, {cfg['ft_steps']} steps (as samda-fewshot)",
             "samda-1-long": f"fused, 1 image, {cfg['long_steps']} steps",
             "samda-1-adapter10x": f"fused, 1 image, {cfg['ft_steps']} steps, adapter lr ×{cfg['adapter_lr_scale']:g}",
             f"expert-{k}": f"the expert alone, {k} images", f"samda-{k}": f"fused, {k} images",
             "expert-pool": f"the expert alone on all 64 pool images, {cfg['pool_steps']} steps (the ceiling)"}
    return {"rows": summarize_rows(per_seed, ["dice", "adapter_share"], notes),
            "metrics": [["dice", "target Dice"], ["adapter_share", "‖A(g)‖ / ‖z‖ at the bottleneck"]],
            "config": cfg, "extra": {"generic_encoder": os.path.basename(encoder_dir)}}
