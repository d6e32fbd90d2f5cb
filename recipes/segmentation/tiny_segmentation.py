"""A plain ``transformers.Trainer`` script: a small segmentation UNet (diffusers' ``UNet2DModel``, out_channels =
classes) on a synthetic few-shot set of grey images with bright discs, the mask marking the discs.

It is written for ``samda`` (README, "Classifier recipes"), which wraps the UNet (the "expert") with a frozen image
encoder (the "generic" one) and supplies the loss (Dice + cross-entropy) and the image + mask collator; the UNet
alone has no loss. Offline, with a tiny SAM built from a config::

    python -c "from ftplugins.methods.samda.tiny import tiny_sam; tiny_sam().save_pretrained('runs/tiny-sam')"
    python -m ftplugins.run --plugins samda --samda_encoder runs/tiny-sam -- \
        recipes/segmentation/tiny_segmentation.py --output_dir runs/samda --use_cpu

``--samda_fusion none`` trains the expert alone (the ablation baseline). The saved model is the fused one
(``encoder.*`` the frozen encoder, ``expert.*`` the UNet, ``adapter.*`` the fusion).
"""

import argparse

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from ftplugins.methods.samda.tiny import tiny_segmentation_unet


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--images", type=int, default=8, help="training images (a few shots)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_cpu", action="store_true")
    return parser.parse_args()


def discs(count, size, seed):
    """Grey images (1, H, W) with one bright noisy disc each; masks: 1 on the disc, 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(count):
        cy, cx = torch.randint(size // 4, size - size // 4, (2,), generator=g).tolist()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 5) ** 2).long()
        images.append((0.2 + 0.6 * mask.float() + 0.1 * torch.randn(size, size, generator=g)).unsqueeze(0).tolist())
        masks.append(mask.tolist())
    return Dataset.from_dict({"image": images, "mask": masks})


def main():
    args = parse_args()
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, save_strategy="no", seed=args.seed, use_cpu=args.use_cpu,
        report_to="none", disable_tqdm=True, logging_steps=1)
    model = tiny_segmentation_unet(num_classes=2, in_channels=1, size=args.size, seed=args.seed)
    trainer = Trainer(model=model, args=training, train_dataset=discs(args.images, args.size, args.seed),
                      eval_dataset=discs(4, args.size, args.seed + 1))
    trainer.train()
    print(trainer.evaluate())
    trainer.save_model()


if __name__ == "__main__":
    main()
