"""The mean teacher for object detection (PS-TTL's setting): DETR-style models whose output has ``logits`` (batch,
queries, classes + 1 "no object") and ``pred_boxes`` (batch, queries, 4), trained on targets
``{"class_labels", "boxes"}`` per image as transformers' detection models take them.

An unlabelled image (target ``None``) gets the teacher's confident detections as its targets: the queries whose best
object class has probability ≥ τ, with that class and the teacher's box (PS-TTL's 0.9 threshold on the teacher's
scores). Images where the teacher is confident of nothing are left out of the unsupervised term (as unconfident rows
are in classification): training them towards "no object everywhere" would teach the student to miss objects.
Loss = the model's detection loss on the labelled images + λ × its loss on the pseudo-labelled ones.
Not built here: PS-TTL's prototype-based soft labels (class prototypes from RoI features); classification has them
(:mod:`.prototypes`).
"""

from __future__ import annotations

from typing import Any

import torch


def is_detection_batch(inputs: dict[str, Any]) -> bool:
    return "pixel_values" in inputs and isinstance(inputs.get("labels"), (list, tuple))


@torch.no_grad()
def pseudo_targets(logits: torch.Tensor, boxes: torch.Tensor, threshold: float) -> list[dict[str, torch.Tensor]]:
    """Per image: the queries whose best object class (the last class is "no object") reaches ``threshold``."""
    probs = logits.detach().float().softmax(-1)[..., :-1]
    confidence, classes = probs.max(-1)
    keep = confidence >= threshold
    return [{"class_labels": classes[i][keep[i]], "boxes": boxes[i][keep[i]].detach().float()}
            for i in range(logits.shape[0])]


def mean_teacher_detection_loss(model: Any, teacher: Any, inputs: dict[str, Any], threshold: float,
                                weight: float) -> tuple[torch.Tensor, Any]:
    """(loss, the student's output on the labelled images, or on the pseudo-labelled ones when none is labelled)."""
    targets = list(inputs["labels"])
    pixels, mask = inputs["pixel_values"], inputs.get("pixel_mask")
    labelled = [i for i, t in enumerate(targets) if t is not None]
    unlabelled = [i for i, t in enumerate(targets) if t is None]

    def rows(index: list[int]) -> dict[str, Any]:
        part = {"pixel_values": pixels[index]}
        if mask is not None:
            part["pixel_mask"] = mask[index]
        return part

    loss, outputs = pixels.new_zeros(()).float(), None
    if labelled:
        outputs = model(**rows(labelled), labels=[targets[i] for i in labelled])
        loss = loss + outputs.loss
    if unlabelled and weight > 0:
        with torch.no_grad():
            taught = teacher(**rows(unlabelled))
        pseudo = pseudo_targets(taught.logits, taught.pred_boxes, threshold)
        confident = [i for i, p in zip(unlabelled, pseudo) if len(p["class_labels"])]
        if confident:
            chosen = [p for p in pseudo if len(p["class_labels"])]
            streamed = model(**rows(confident), labels=chosen)
            loss = loss + weight * streamed.loss
            outputs = outputs if outputs is not None else streamed
    if outputs is None:  # nothing labelled, nothing confident: a zero loss that still runs the step
        outputs = model(**rows(unlabelled))
        loss = loss + outputs.logits.sum() * 0.0
    return loss, outputs


def check_detection_targets(values: list[Any], column: str) -> None:
    """Detection rows: a dict with ``class_labels`` and ``boxes`` (one box per label), or None (unlabelled)."""
    from ftplugins.errors import FtpluginsError

    if not any(v is None for v in values):
        raise FtpluginsError(f"mean_teacher: the training dataset has no unlabelled images ({column!r} None); add "
                             "the unlabelled stream, or train without mean_teacher.")
    for index, target in enumerate(values):
        if target is None:
            continue
        if not isinstance(target, dict) or not {"class_labels", "boxes"} <= set(target):
            raise FtpluginsError(f"mean_teacher: detection target of row {index} in {column!r} is {target!r}; expected "
                                 "{'class_labels': [...], 'boxes': [[cx, cy, w, h], ...]} or None for an unlabelled "
                                 "image.")
        if len(target["class_labels"]) != len(target["boxes"]):
            raise FtpluginsError(f"mean_teacher: row {index} of {column!r} has {len(target['class_labels'])} "
                                 f"class_labels and {len(target['boxes'])} boxes; give one box per label.")
