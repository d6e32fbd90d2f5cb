"""The pieces of the ``probe_prune`` plugin that need torch: the periodic probe callback and the final analysis."""

from __future__ import annotations

import copy
import os
from typing import Any

from transformers import TrainerCallback

from . import probe_prune, probing
from .reverse_ft import fresh_copy
from .step_log import log_during_step


def unwrapped(trainer: Any) -> Any:
    from ftplugins.eval.report import unwrapped_model

    return unwrapped_model(trainer)


class ProbeEveryCallback(TrainerCallback):
    """Log ``probe_prune/layer_<i>`` (probe accuracy of layer i; 0 = embeddings) every N optimizer steps."""

    def __init__(self, run: Any, options: Any):
        self.run, self.options = run, options
        texts, labels = probe_prune.load_texts(options.probe_prune_data, options.probe_prune_text_field,
                                               options.probe_prune_label_field)
        self.texts, (_names, self.labels) = texts, probe_prune.encode_labels(labels)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.options.probe_prune_every or not state.is_world_process_zero:
            return
        trainer = self.run.trainer
        features = probing.layer_features(unwrapped(trainer), trainer.processing_class, self.texts)
        accuracies = probing.layer_accuracies(features, self.labels, backend=self.options.probe_prune_probe)
        log_during_step(trainer, {f"probe_prune/layer_{i}": a for i, a in enumerate(accuracies)})


def initial_copy(trainer: Any) -> Any:
    """A CPU copy of the model's pre-trained weights (a PEFT model's base, without its adapter)."""
    model = unwrapped(trainer)
    if hasattr(model, "unload"):
        model = copy.deepcopy(model).unload()
    return fresh_copy(model, "cpu")


def analyse_run(run: Any, trainer: Any, options: Any, initial: Any) -> dict:
    """The analysis of the initial weights (``initial``) against the trained model; report into OUTPUT_DIR."""
    model = unwrapped(trainer)
    if hasattr(model, "merge_and_unload"):  # a PEFT model: the units' weights are the merged ones
        model = copy.deepcopy(model).merge_and_unload()
    tuned = fresh_copy(model)
    base = initial.to(next(tuned.parameters()).device)
    texts, labels = probe_prune.load_texts(options.probe_prune_data, options.probe_prune_text_field,
                                           options.probe_prune_label_field)
    report = probe_prune.analyze(base, tuned, trainer.processing_class, texts, labels, units=options.unit_counts(),
                                 mode=options.probe_prune_mode, reverse_steps=options.probe_prune_reverse_steps,
                                 reverse_learning_rate=options.probe_prune_reverse_lr,
                                 backend=options.probe_prune_probe, seed=trainer.args.seed)
    metrics = {f"probe_prune/{variant}_best_probe": max(acc) for variant, acc in report.probes.items()}
    metrics.update({f"probe_prune/{variant}_kl_to_base": b["kl_to_base"] for variant, b in report.behaviour.items()
                    if variant != "base"})
    trainer.log(metrics)
    if trainer.args.should_save:
        probe_prune.write_report(report, os.path.join(trainer.args.output_dir, "probe_prune.json"))
    run.state["probe_prune"]["report"] = report.as_json()
    return metrics
