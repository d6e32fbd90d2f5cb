"""SetFit's contrastive objective (Tunstall et al. 2022, sentence-transformers' ``CosineSimilarityLoss``): pairs of
examples with target similarity 1 (same label) or 0 (different labels), loss = mean (cos(u, v) − target)².

SetFit samples a fixed number of pairs per example; we take every pair inside a batch (within one task), which needs
no sampler and gives the same expectation over random batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_pair_loss(features: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """``features[i]`` (n_i, d) and ``labels[i]`` (n_i,) of group i (one task); pairs never cross groups.

    A batch without any pair (one row per task) gives a zero loss that still depends on the features, so the
    step runs as usual."""
    errors = []
    for feats, labs in zip(features, labels):
        if feats.shape[0] < 2:
            continue
        first, second = torch.triu_indices(feats.shape[0], feats.shape[0], offset=1, device=feats.device)
        cosine = F.cosine_similarity(feats[first].float(), feats[second].float(), dim=-1)
        target = (labs[first] == labs[second]).float()
        errors.append((cosine - target) ** 2)
    if not errors:
        return sum(f.sum() for f in features) * 0.0
    return torch.cat(errors).mean()
