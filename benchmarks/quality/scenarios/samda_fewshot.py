"""SAMDA: a frozen generic encoder fused into a source-trained segmentation expert, 1 vs 10 labelled target images.

Synthetic "microscopy" (32×32 grey images, 2-4 elliptic organelles each, mask = the organelles). Source style:
bright organelles on a dark, smoothly textured background with mild noise. Target style (the shifted modality):
contrast inverted and lowered (dark organelles on a bright, coarsely textured background), each organelle with a
bright rim, strong pixel noise (σ 0.3 against a contrast of 0.25).
The generic component stands in for SAM's broad pre-training, which cannot be downloaded here: a tiny SAM vision
encoder (``SamVisionModel``, patch 4) pre-trained once (cached) to predict the organelle fraction of every patch on
images of random styles (either polarity, random contrast, noise and texture), so its features know organelles
across styles — the premise of the paper, built in, not discovered. The expert is diffusers' ``UNet2DModel``
(``ftplugins.methods.samda.tiny``) trained on 256 source images (Dice + CE, through ``compose(Trainer, [samda])``
with ``samda_fusion=none``). Per seed, k = 1 or 10 labelled target images (drawn with the seed) fine-tune the source
expert through the same trainer, same steps (150), batch (min(k, 4)) and learning rate (2e-3, cosine): ``expert-k``
(``samda_fusion=none``, the expert alone) or ``samda-k`` (``samda_fusion=add``: the frozen generic features
projected into the expert's bottleneck, the adapter zero-initialised, at the plugin's default adapter learning rate
``samda_adapter_lr_scale`` = 10 × 2e-3; before ``samda-diagnosis`` showed the adapter unused at 1 ×, the rate was
shared).
``dice`` = foreground Dice of the argmax masks on 128 target test images; ``adapter_share`` (diagnostic) =
‖A(g)‖ / ‖z‖, how far the fused generic features move the expert's bottleneck on them; ``source-only`` = the source
expert without target labels. The claim: samda-1 beats expert-1, in direction, 3 seeds.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality.scenarios._common import Context, cached_build, summarize_rows

NAME = "samda-fewshot"
TITLE = "SAMDA: generic encoder + expert vs the expert alone, 1 and 10 labelled target images"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("dice",)
SHOTS = (1, 10)
SIZE = 32

FULL = dict(generic_images=2048, generic_steps=600, generic_batch=32, generic_lr=2e-3, source_images=256,
            source_steps=400, source_batch=8, source_lr=3e-3, ft_steps=150, ft_lr=2e-3, test_images=128)
SMOKE = dict(generic_images=16, generic_steps=2, generic_batch=4, generic_lr=2e-3, source_images=8, source_steps=2,
             source_batch=4, source_lr=3e-3, ft_steps=2, ft_lr=2e-3, test_images=4)


def organelles(count: int, seed: int):
    """``count`` masks (N, 32, 32) of 2-4 random ellipses each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for i in range(count):
        for _ in range(int(torch.randint(2, 5, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * (SIZE - 8) + 4).tolist()
            ry, rx = (torch.rand(2, generator=g) * 3 + 2.5).tolist()
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).long()
    return masks


def render(masks, style: str, seed: int):
    """Images (N, 1, 32, 32) of ``masks`` in a style: ``source``, ``target`` or ``random`` (per image)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    n = masks.shape[0]
    fg = masks.float().unsqueeze(1)
    texture = F.interpolate(torch.rand(n, 1, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear",
                            align_corners=False)
    rim = (F.max_pool2d(fg, 3, 1, 1) - fg).clamp(min=0)
    if style == "source":
        image = 0.2 + 0.15 * texture + 0.5 * fg + 0.05 * torch.randn(fg.shape, generator=g)
    elif style == "target":
        image = 0.7 - 0.3 * texture - 0.25 * fg + 0.2 * rim + 0.3 * torch.randn(fg.shape, generator=g)
    else:
        sign = torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
        base = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
        contrast = 0.25 + 0.35 * torch.rand(n, 1, 1, 1, generator=g)
        image = (base + sign * contrast * fg + (torch.rand(n, 1, 1, 1, generator=g) * 0.6 - 0.3) * rim
                 + 0.2 * torch.rand(n, 1, 1, 1, generator=g) * (texture - 0.5)
                 + 0.2 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(fg.shape, generator=g))
    return image.clamp(0, 1)


def rows(masks, images):
    from datasets import Dataset

    return Dataset.from_dict({"image": images.tolist(), "mask": masks.tolist()})


def build_generic(cfg: dict[str, Any], ctx: Context) -> str:
    def build(folder: str) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F
        from transformers import SamVisionConfig, SamVisionModel

        torch.manual_seed(0)
        config = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=SIZE, patch_size=4, mlp_dim=64, window_size=0, global_attn_indexes=[1],
                                 num_pos_feats=16, num_channels=1)
        encoder = SamVisionModel(config)
        head = torch.nn.Conv2d(16, 1, 1)
        params = [*encoder.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=cfg["generic_lr"])
        masks = organelles(cfg["generic_images"], seed=1000)
        images = render(masks, "random", seed=1001)
        g = torch.Generator().manual_seed(1002)
        for _ in range(cfg["generic_steps"]):
            pick = torch.randint(0, len(masks), (cfg["generic_batch"],), generator=g)
            target = F.avg_pool2d(masks[pick].float().unsqueeze(1), 4)
            pred = head(encoder(pixel_values=images[pick]).last_hidden_state).sigmoid()
            loss = F.mse_loss(pred, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder.save_pretrained(folder)
        return {"final_loss": loss.item()}

    recipe = {k: cfg[k] for k in cfg if k.startswith("generic_")}
    folder, record = cached_build(ctx, "samda-generic", recipe, build)
    ctx.log(f"[samda] generic encoder {folder} (patch-fraction MSE {record['final_loss']:.4f})")
    return folder


def train(expert, data, encoder: str, fusion: str, steps: int, lr: float, batch: int, seed: int,
          adapter_lr_scale: float | None = None):
    """The expert (wrapped by samda) fine-tuned on ``data``; ``adapter_lr_scale`` is the plugin's
    ``samda_adapter_lr_scale`` (the adapter's learning rate over the rest's; None: the plugin's default)."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    import ftplugins
    from ftplugins.methods.samda import plugin

    scale = {} if adapter_lr_scale is None else {"samda_adapter_lr_scale": adapter_lr_scale}
    cls = ftplugins.compose(Trainer, [plugin], samda_encoder=encoder, samda_fusion=fusion, **scale)
    with tempfile.TemporaryDirectory(prefix="ftplugins-samda-") as tmp:
        args = TrainingArguments(output_dir=tmp, use_cpu=True, report_to="none", max_steps=steps,
                                 per_device_train_batch_size=batch, learning_rate=lr, save_strategy="no",
                                 disable_tqdm=True, seed=seed, data_seed=seed, warmup_steps=max(1, steps // 10),
                                 lr_scheduler_type="cosine", logging_steps=max(1, steps // 4))
        trainer = cls(model=expert, args=args, train_dataset=data)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainer.model


def dice(model, images, masks) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(images[i:i + 64]).logits.argmax(1) for i in range(0, len(images), 64)])
    return foreground_dice(pred, masks)


def foreground_dice(pred, masks) -> float:
    """Dice of class 1 between predicted and true masks (class-index tensors)."""
    inter = ((pred == 1) & (masks == 1)).sum().item()
    return 2 * inter / max(1, (pred == 1).sum().item() + (masks == 1).sum().item())


def adapter_share(model, images) -> float:
    """‖A(g)‖ / ‖z‖ at the bottleneck on ``images``: how much the fused generic features move the expert's bottleneck
    (0 for the expert alone)."""
    import torch

    from ftplugins.methods.samda.model import generic_features

    if model.adapter is None:
        return 0.0
    seen = {}
    handle = model.expert.mid_block.register_forward_hook(lambda m, i, out: seen.setdefault("z", out))
    model.eval()
    with torch.no_grad():
        model.expert(images, 0)  # the expert alone (no generic features set): z
        handle.remove()
        z = seen["z"]
        delta = model.adapter(generic_features(model.encoder, images), tuple(z.shape[-2:]))
    return (delta.norm() / z.norm()).item()


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from ftplugins.methods.samda.tiny import tiny_segmentation_unet

    cfg = SMOKE if ctx.smoke else FULL
    encoder = build_generic(cfg, ctx)
    source_masks = organelles(cfg["source_images"], seed=2000)
    source = rows(source_masks, render(source_masks, "source", seed=2001))
    torch.manual_seed(0)
    expert = train(tiny_segmentation_unet(num_classes=2, in_channels=1, size=SIZE), source, encoder, "none",
                   cfg["source_steps"], cfg["source_lr"], cfg["source_batch"], seed=0).expert
    with tempfile.TemporaryDirectory() as tmp:
        expert.save_pretrained(os.path.join(tmp, "expert"))
        from diffusers import UNet2DModel

        def source_expert():
            return UNet2DModel.from_pretrained(os.path.join(tmp, "expert"))

        test_masks = organelles(cfg["test_images"], seed=3000)
        test_images = render(test_masks, "target", seed=3001)
        pool_masks = organelles(64, seed=4000)
        pool_images = render(pool_masks, "target", seed=4001)
        from ftplugins.methods.samda.model import SamdaModel

        per_seed: dict[str, list[dict[str, Any]]] = {"source-only": []}
        for seed in ctx.seeds:
            alone = SamdaModel(source_expert(), torch.nn.Identity(), fusion="none")
            per_seed["source-only"].append({"seed": seed, "dice": dice(alone, test_images, test_masks)})
            pick = torch.randperm(len(pool_masks), generator=torch.Generator().manual_seed(seed))
            for k in SHOTS:
                shots = rows(pool_masks[pick[:k]], pool_images[pick[:k]])
                for row, fusion in ((f"expert-{k}", "none"), (f"samda-{k}", "add")):
                    torch.manual_seed(seed)
                    model = train(source_expert(), shots, encoder, fusion, cfg["ft_steps"], cfg["ft_lr"],
                                  min(k, 4), seed)
                    score = dice(model, test_images, test_masks)
                    share = adapter_share(model, test_images)
                    per_seed.setdefault(row, []).append({"seed": seed, "dice": score, "adapter_share": share})
                    ctx.log(f"[samda] seed {seed} {row}: dice {score:.3f}, adapter share {share:.4f}")
    notes = {"source-only": "the source-trained expert, no target labels",
             **{f"expert-{k}": f"the expert alone fine-tuned on {k} target image(s)" for k in SHOTS},
             **{f"samda-{k}": f"generic + expert fused, fine-tuned on {k} target image(s)" for k in SHOTS}}
    return {"rows": summarize_rows(per_seed, ["dice", "adapter_share"], notes),
            "metrics": [["dice", "target Dice"], ["adapter_share", "‖A(g)‖ / ‖z‖ at the bottleneck"]],
            "config": cfg, "extra": {"generic_encoder": os.path.basename(encoder)}}
