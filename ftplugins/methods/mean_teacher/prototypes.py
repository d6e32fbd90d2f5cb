"""PS-TTL's prototype-based soft labels for classification.

A prototype per class is the mean of the teacher's head-input features (the vector the classification head reads)
of that class's trusted rows: the labelled rows under their label and the unlabelled rows the teacher labels with
confidence ≥ τ under their pseudo-label. Prototypes are an EMA over batches (p ← m·p + (1 − m)·batch mean; a class's
first batch sets it; m = 0 keeps only the current batch), so a class absent from a batch keeps its prototype.

An unlabelled row the teacher is unsure of gets a soft label instead of being dropped: softmax over classes of
cos(feature, prototype) / T (classes without a prototype yet get 0). PS-TTL keeps its low-confidence pseudo-labels
this way rather than discarding them; confident rows keep their hard pseudo-label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ftplugins.errors import FtpluginsError


class Prototypes:
    """Per-class EMA of the teacher's features of trusted rows; ``state_dict`` goes into checkpoints."""

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.vectors: torch.Tensor | None = None  # [classes, features]
        self.seen: torch.Tensor | None = None  # [classes] bool: the class has a prototype

    @torch.no_grad()
    def update(self, features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> None:
        """``features`` [rows, F] with their class index ``classes`` [rows]."""
        features = features.detach().float()
        if self.vectors is None:
            self.vectors = features.new_zeros(num_classes, features.shape[-1])
            self.seen = torch.zeros(num_classes, dtype=torch.bool, device=features.device)
        self.vectors, self.seen = self.vectors.to(features.device), self.seen.to(features.device)
        if not len(classes):
            return
        sums = features.new_zeros(self.vectors.shape).index_add_(0, classes, features)
        counts = torch.bincount(classes, minlength=num_classes).to(features.dtype)
        present = counts > 0
        means = sums[present] / counts[present, None]
        keep = torch.where(self.seen[present], self.momentum, 0.0).to(features.dtype)[:, None]
        self.vectors[present] = keep * self.vectors[present] + (1 - keep) * means
        self.seen |= present

    @torch.no_grad()
    def soft_labels(self, features: torch.Tensor, temperature: float) -> torch.Tensor | None:
        """[rows, classes] probabilities from cosine similarity to the prototypes; None before any prototype."""
        if self.seen is None or not self.seen.any():
            return None
        vectors, seen = self.vectors.to(features.device), self.seen.to(features.device)
        similarity = F.normalize(features.detach().float(), dim=-1) @ F.normalize(vectors, dim=-1).T
        similarity = similarity.masked_fill(~seen, float("-inf"))
        return (similarity / temperature).softmax(-1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.vectors is None else {"vectors": self.vectors, "seen": self.seen}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vectors, self.seen = (state["vectors"], state["seen"].bool()) if state else (None, None)


def classification_head(model: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    """The last ``nn.Linear`` with one output per class: the head whose input is the feature."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise FtpluginsError(f"mean_teacher: no Linear layer with {num_classes} outputs (one per class) found in "
                             f"{type(model).__name__}; prototype soft labels need the classification head's input. "
                             "Set mean_teacher_labels=hard.")
    return heads[-1]


@torch.no_grad()
def teacher_logits_and_features(teacher: torch.nn.Module, inputs: dict[str, Any],
                                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits and its head's input, shaped like the logits with features last."""
    captured: list[torch.Tensor] = []
    hook = classification_head(teacher, num_classes).register_forward_pre_hook(
        lambda module, args: captured.append(args[0]))
    try:
        logits = teacher(**inputs).logits
    finally:
        hook.remove()
    features = captured[-1]
    if features.shape[:-1] != logits.shape[:-1]:
        raise FtpluginsError(f"mean_teacher: {type(teacher).__name__}'s head reads features of shape "
                             f"{tuple(features.shape)} but emits logits of shape {tuple(logits.shape)} (pooled after "
                             "the head, as in decoder classifiers); prototype soft labels need one feature per "
                             "prediction. Set mean_teacher_labels=hard.")
    return logits, features
