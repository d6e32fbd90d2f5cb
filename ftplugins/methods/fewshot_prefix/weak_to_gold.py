"""Weak -> gold sequential SFT with label-cost accounting (the paper's "mixed" regime).

Mallen & Belrose (arXiv:2410.13215, EleutherAI/scalable-elicitation): with a fixed labelling budget,
train first on many cheap weak labels, then on few expensive gold labels. Stage 2 starts from the
stage-1 weights with a **fresh optimiser** (no moments, no step count, a new learning-rate schedule):
here each stage is its own trainer built by ``trainer_factory``, and we check that stage 2's trainer
is a different object that has not created an optimiser yet.

The cost of the labels is ``n_weak * weak_cost + n_gold * gold_cost`` (unit costs are the caller's,
e.g. 1 for a weak label and 10 for a gold one). Validation hold-out and early stopping (the paper's
20% / patience) are the trainer's business: pass ``eval_dataset`` and an ``EarlyStoppingCallback`` in
the factory. Any trainer works (``ftplugins.compose`` ones included, e.g. with ``fewshot_prefix``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ftplugins.errors import FtpluginsError

STAGES = ("weak", "gold")


def label_cost(n_weak: int, n_gold: int, weak_cost: float, gold_cost: float) -> dict[str, float]:
    """The paper's budget: cost = n_weak * c_weak + n_gold * c_gold."""
    if weak_cost < 0 or gold_cost < 0:
        raise FtpluginsError(f"label unit costs must be >= 0, got weak_cost={weak_cost!r}, gold_cost={gold_cost!r}.")
    weak, gold = n_weak * weak_cost, n_gold * gold_cost
    return {"weak": weak, "gold": gold, "total": weak + gold}


def train_weak_then_gold(
    trainer_factory: Callable[..., Any],
    model: Any,
    weak_dataset: Any,
    gold_dataset: Any,
    *,
    weak_cost: float = 1.0,
    gold_cost: float = 1.0,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``weak_dataset`` then ``gold_dataset``; returns the report (and the final model).

    ``trainer_factory(model=..., train_dataset=..., stage="weak"|"gold")`` builds a fresh trainer for one
    stage (its own output_dir, steps, learning rate). Either dataset may be ``None``/empty to skip its stage
    (gold-only or weak-only baselines, cost counted the same way). The report holds per-stage rows, the label
    costs and the trained ``model`` (under ``"model"``; left out of the JSON written to ``report_path``).
    """
    n = {"weak": _length(weak_dataset), "gold": _length(gold_dataset)}
    costs = label_cost(n["weak"], n["gold"], weak_cost, gold_cost)
    report: dict[str, Any] = {"n_weak": n["weak"], "n_gold": n["gold"], "weak_cost": weak_cost,
                              "gold_cost": gold_cost, "cost": costs, "stages": []}
    previous = None
    for stage, dataset in zip(STAGES, (weak_dataset, gold_dataset)):
        if not n[stage]:
            continue
        trainer = trainer_factory(model=model, train_dataset=dataset, stage=stage)
        if previous is not None and (trainer is previous or getattr(trainer, "optimizer", None) is not None):
            raise FtpluginsError(
                f"train_weak_then_gold: the {stage} stage's trainer already has an optimizer (or is the weak "
                "stage's trainer); the gold stage must start with a fresh optimizer, so trainer_factory must build "
                "a new trainer each call without passing optimizers=."
            )
        result = trainer.train()
        model = trainer.model
        report["stages"].append({
            "stage": stage,
            "examples": n[stage],
            "label_cost": costs[stage],
            "steps": int(trainer.state.global_step),
            "train_loss": float(getattr(result, "training_loss", float("nan"))),
        })
        previous = trainer
    if not report["stages"]:
        raise FtpluginsError("train_weak_then_gold: both the weak and the gold dataset are empty; nothing to train.")
    if report_path:
        os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
        with open(report_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    report["model"] = model
    return report


def _length(dataset: Any) -> int:
    if dataset is None:
        return 0
    try:
        return len(dataset)
    except TypeError:
        raise FtpluginsError(
            "train_weak_then_gold counts the labels of each stage for the cost report, which a streaming dataset "
            "cannot tell; pass map-style datasets."
        ) from None
