"""The LEVI model: a frozen (or adapter-tuned) pre-trained encoder, a small model from scratch, and adapting heads.

For each chosen layer ℓ: h_ℓ = mean-pooled hidden states of the pre-trained model, z = the small model's output,
ŷ_ℓ = A_ℓ([h_ℓ; z]). Training loss: the mean over heads of CE(ŷ_ℓ, y) (one loss over all heads); prediction: the
heads' ensemble. Returns ``SequenceClassifierOutput`` so ``transformers.Trainer`` trains and evaluates it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ftplugins.errors import FtpluginsError, UnsupportedModelError


def encoder_of(model: Any) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if encoder is None:
        raise UnsupportedModelError(
            f"levi: {type(base).__name__} (model_type {getattr(base.config, 'model_type', '?')!r}) has no backbone "
            f"under base_model_prefix {getattr(base, 'base_model_prefix', None)!r}; LEVI taps a transformers "
            "model's hidden states (e.g. AutoModelForSequenceClassification of BERT / MiniLM)."
        )
    return encoder


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class SmallModel(nn.Module):
    """Token-embedding bag + one MLP layer, randomly initialised (the paper's small model is unspecified)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU())

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled(self.embed(input_ids), mask))


class LeviModel(nn.Module):
    def __init__(self, pretrained: Any, layers: list[int], small_dim: int, head_dim: int, ensemble: str):
        super().__init__()
        self.pretrained = pretrained
        config = pretrained.config
        count = config.num_hidden_layers + 1  # hidden_states: the embeddings, then every layer
        bad = [i for i in layers if not -count <= i < count]
        if bad:
            raise FtpluginsError(f"levi_layers {bad}: {type(pretrained).__name__} has {count} hidden states (embeddings "
                                 f"+ {config.num_hidden_layers} layers); use indices in [{-count}, {count - 1}].")
        self.layers, self.ensemble, self.config = list(layers), ensemble, config
        self.small = SmallModel(config.vocab_size, small_dim)
        labels = config.num_labels
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(config.hidden_size + small_dim, head_dim), nn.GELU(), nn.Linear(head_dim, labels))
            for _ in layers)

    def head_logits(self, input_ids, attention_mask=None, token_type_ids=None) -> list[torch.Tensor]:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = encoder_of(self.pretrained)(input_ids=input_ids, attention_mask=mask, output_hidden_states=True,
                                             **extra).hidden_states
        z = self.small(input_ids, mask)
        return [head(torch.cat([pooled(hidden[i], mask), z.to(hidden[i].dtype)], -1))
                for head, i in zip(self.heads, self.layers)]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, num_items_in_batch=None):
        """``num_items_in_batch`` (passed by the Trainer under gradient accumulation, as to the wrapped model): the
        per-head CE is then summed and divided by it, so accumulated micro-batches weigh every example equally."""
        per_head = self.head_logits(input_ids, attention_mask, token_type_ids)
        if self.ensemble == "mean_probs":
            logits = torch.stack([h.float().softmax(-1) for h in per_head]).mean(0).log()
        else:
            logits = torch.stack([h.float() for h in per_head]).mean(0)
        loss = None
        if labels is not None:
            if num_items_in_batch is None:
                loss = torch.stack([F.cross_entropy(h.float(), labels) for h in per_head]).mean()
            else:
                loss = torch.stack([F.cross_entropy(h.float(), labels, reduction="sum") for h in per_head]).mean()
                loss = loss / num_items_in_batch
        return SequenceClassifierOutput(loss=loss, logits=logits)
