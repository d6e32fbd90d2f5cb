"""LiST's self-training sessions, run after the teacher (pet's prompt + verbaliser training) finished.

Per session: the current model is the teacher — its soft labels on the unlabelled rows are computed once, so it is
frozen for the whole session; the student's adapter is re-initialised (the head is kept); the student trains on
unlabelled batches against the soft labels with per-example weights (uniform, then meta re-weighting); then a few
labelled steps. A plain torch loop on the trainer's model and device: one process (the plugin declares ``single``).
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ftplugins.methods.pet.head import label_scores

from .reweight import meta_weights, per_example_kl, reweighting_on, uniform_weights, weighted_distillation


class Scorer(nn.Module):
    """``model`` as one module whose forward gives the label scores (what ``functional_call`` needs)."""

    def __init__(self, model: nn.Module, mask_token_id: int):
        super().__init__()
        self.model, self.mask_token_id = model, mask_token_id

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return label_scores(self.model, self.model.pet_head, inputs, self.mask_token_id)


def batches(rows: Any, collator: Any, size: int, rng: random.Random, device) -> Any:
    """Endless shuffled batches of ``rows`` (a list of tokenized dicts), with their row indices."""
    order: list[int] = []
    while True:
        if len(order) < size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        take, order = order[:size], order[size:]
        batch = collator([rows[i] for i in take])
        yield torch.tensor(take), {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def soft_labels(scorer: Scorer, rows: list[dict], collator: Any, device, size: int = 32) -> torch.Tensor:
    scorer.eval()
    out = [scorer({k: v.to(device) for k, v in collator(rows[i:i + size]).items()}).float()
           for i in range(0, len(rows), size)]
    return torch.cat(out)


def run_sessions(model: nn.Module, adapter_init: dict[str, torch.Tensor], labelled: list[dict],
                 unlabelled: list[dict], collator: Any, mask_token_id: int, opts: Any) -> list[dict]:
    """Train ``model`` in place for ``opts.list_selftrain_sessions`` sessions; returns a record per session."""
    device = next(model.parameters()).device
    scorer = Scorer(model, mask_token_id)
    rng = random.Random(opts.list_selftrain_seed)
    trainable = {n: p for n, p in scorer.named_parameters() if p.requires_grad}
    records = []
    for _ in range(opts.list_selftrain_sessions):
        teacher = soft_labels(scorer, unlabelled, collator, device)
        with torch.no_grad():  # a fresh student adapter; the head carries over
            for name, value in adapter_init.items():
                dict(model.named_parameters())[name].copy_(value)
        record = {"teacher": teacher.clone(), "weights": [], "adapter_at_start": {
            n: p.detach().clone() for n, p in model.named_parameters() if n in adapter_init}}
        optimizer = torch.optim.AdamW(trainable.values(), lr=opts.list_selftrain_lr)
        stream_u = batches(unlabelled, collator, opts.list_selftrain_batch_size, rng, device)
        stream_l = batches(labelled, collator, opts.list_selftrain_batch_size, rng, device)
        for step in range(opts.list_selftrain_steps):
            index, batch_u = next(stream_u)
            batch_u = {k: v for k, v in batch_u.items() if k != "labels"}
            if reweighting_on(step, opts.list_selftrain_steps, opts.list_selftrain_warmup):
                _, batch_l = next(stream_l)
                targets = batch_l.pop("labels")
                scorer.eval()  # no dropout: the virtual step must see the function it differentiates
                # Second-order gradients: the fused attention kernels have no double backward, the math one has.
                with sdpa_kernel([SDPBackend.MATH]):
                    weights = meta_weights(
                        trainable,
                        lambda p: per_example_kl(functional_call(scorer, p, (batch_u,)), teacher[index]),
                        lambda p: F.cross_entropy(functional_call(scorer, p, (batch_l,)).float(), targets),
                        lr=opts.list_selftrain_meta_lr)
            else:
                weights = uniform_weights(len(index), device)
            record["weights"].append(weights.cpu())
            scorer.train()
            loss = weighted_distillation(scorer(batch_u), teacher[index], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for _ in range(opts.list_selftrain_labelled_steps):
            _, batch_l = next(stream_l)
            targets = batch_l.pop("labels")
            loss = F.cross_entropy(scorer(batch_l).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        records.append(record)
    model.eval()
    return records
