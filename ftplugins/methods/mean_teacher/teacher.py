"""The EMA teacher and the mean-teacher loss.

The teacher is a frozen copy of the model, kept outside it (not a submodule: the optimizer never sees it, the model
files never hold it). After every optimizer step its weights move toward the student's: t ← α·t + (1 − α)·s. Each
checkpoint carries it as ``mean_teacher.safetensors`` (parameters and buffers), read back when the run resumes.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError

IGNORE = -100
TEACHER_FILE = "mean_teacher.safetensors"
PROTOTYPES_FILE = "mean_teacher_prototypes.safetensors"


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


def save_teacher(teacher: torch.nn.Module, checkpoint: str) -> None:
    """Into the checkpoint being written (staged by ftplugins: it appears whole or not at all)."""
    from safetensors.torch import save_model

    save_model(teacher, os.path.join(checkpoint, TEACHER_FILE))  # handles tied weights, unlike save_file


def load_teacher(teacher: torch.nn.Module, checkpoint: str) -> None:
    from safetensors.torch import load_model

    path = os.path.join(checkpoint, TEACHER_FILE)
    if not os.path.exists(path):
        raise FtpluginsError(f"mean_teacher: checkpoint {checkpoint} has no {TEACHER_FILE} (saved without the "
                             "mean_teacher plugin, or by an older version); resuming would restart the teacher from "
                             "the student. Resume from a checkpoint of a mean_teacher run, or train from the start.")
    load_model(teacher, path, strict=True)


def save_prototypes(prototypes: Any, checkpoint: str) -> None:
    """The class prototypes, when any exist yet (hard labels, or no batch seen: nothing to save)."""
    from safetensors.torch import save_file

    state = prototypes.state_dict()
    if state:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(checkpoint, PROTOTYPES_FILE))


def load_prototypes(prototypes: Any, checkpoint: str) -> None:
    from safetensors.torch import load_file

    path = os.path.join(checkpoint, PROTOTYPES_FILE)
    prototypes.load_state_dict(load_file(path) if os.path.exists(path) else {})


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float) -> None:
    """t ← α·t + (1 − α)·s for every parameter and floating buffer; α = 1 leaves the teacher as it is."""
    if alpha == 1.0:
        return
    students = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(alpha).add_(students[name].detach().to(t.dtype), alpha=1 - alpha)
    buffers = dict(student.named_buffers())
    for name, t in teacher.named_buffers():
        if t.is_floating_point() and name in buffers:
            t.mul_(alpha).add_(buffers[name].to(t.dtype), alpha=1 - alpha)


def mean_teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      threshold: float, weight: float, soft: torch.Tensor | None = None) -> torch.Tensor:
    """CE on the labelled rows + λ · CE on the unlabelled rows against the teacher's targets.

    Targets: the confident rows' hard pseudo-label; with ``soft`` (prototype soft labels, one probability row per
    prediction) also the unconfident unlabelled rows, against their soft label. Each term is the mean over its own
    rows, 0 when it has none (a batch of only the stream still trains)."""
    logits = student_logits.float()
    labelled = labels != IGNORE
    loss = logits.sum() * 0.0
    if labelled.any():
        loss = loss + F.cross_entropy(logits[labelled], labels[labelled])
    confidence, pseudo = teacher_logits.detach().float().softmax(-1).max(-1)
    confident = ~labelled & (confidence >= threshold)
    if soft is None:
        if confident.any():
            loss = loss + weight * F.cross_entropy(logits[confident], pseudo[confident])
        return loss
    targets = torch.where(confident[..., None], F.one_hot(pseudo, logits.shape[-1]).to(soft.dtype), soft.detach())
    stream = ~labelled
    if stream.any():
        loss = loss + weight * F.cross_entropy(logits[stream], targets[stream])
    return loss


def trusted_rows(teacher_logits: torch.Tensor, labels: torch.Tensor,
                 threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, class) of the rows prototypes are built from: the labelled rows, and the unlabelled ones the teacher
    is sure of."""
    confidence, pseudo = teacher_logits.detach().float().softmax(-1).max(-1)
    labelled = labels != IGNORE
    mask = labelled | (confidence >= threshold)
    return mask, torch.where(labelled, labels, pseudo)


class EmaCallback(TrainerCallback):
    """Moves the teacher after each optimizer step (``on_step_end`` runs after ``optimizer.step()``)."""

    def __init__(self, run: Any, alpha: float, key: str):
        self.run, self.alpha, self.key = run, alpha, key

    def on_step_end(self, args, state, control, model=None, **kwargs):
        teacher = self.run.state.get(self.key)
        if teacher is not None:
            ema_update(teacher, self.run.trainer.accelerator.unwrap_model(self.run.trainer.model), self.alpha)
