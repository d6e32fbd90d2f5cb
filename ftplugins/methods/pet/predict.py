"""Prediction with the pattern ensemble: each label's probability averaged over the patterns."""

from __future__ import annotations

from typing import Any

import torch

from .cloze import fill
from .head import label_scores
from .verbalizer import Verbalizer


@torch.no_grad()
def predict_proba(model: Any, tokenizer: Any, texts: list[str], patterns: list[str], verbalizer: Verbalizer,
                  max_length: int = 128) -> torch.Tensor:
    """[texts, labels] probabilities: softmax over the labels in each pattern, then the mean over the patterns."""
    model.eval()
    device = next(model.parameters()).device
    per_pattern = []
    for pattern in patterns:
        filled = [fill(pattern, t, tokenizer.mask_token, verbalizer.masks) for t in texts]
        batch = tokenizer(filled, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        scores = label_scores(model, model.pet_head, dict(batch), tokenizer.mask_token_id)
        per_pattern.append(scores.float().softmax(dim=-1))
    return torch.stack(per_pattern).mean(dim=0)
