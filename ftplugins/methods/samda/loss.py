"""Dice + cross-entropy, the segmentation loss of SAMDA (and of nnUNet, its expert's origin)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Keeps Dice defined for a class absent from both prediction and target (then its Dice is 1).
DICE_SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 − mean over classes k of (2·Σ p_k·y_k + s) / (Σ p_k + Σ y_k + s), sums over the whole batch's pixels.

    p = softmax(logits) over the class dimension, y = one-hot(labels). Batch Dice (one sum over every image, as
    nnUNet's ``batch_dice``), so a 1-shot batch with an empty class does not dominate; background included."""
    probs = logits.float().softmax(1)
    onehot = F.one_hot(labels.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, dice_weight: float = 1.0,
                 ce_weight: float = 1.0) -> torch.Tensor:
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits.float(), labels.long())
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, labels)
    return loss
