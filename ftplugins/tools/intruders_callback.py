"""The callback of the ``intruders`` plugin (see :mod:`ftplugins.tools.intruders_plugin`)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from . import intruders
from .step_log import log_during_step


def is_adapted(model: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


class IntrudersCallback(TrainerCallback):
    def __init__(self, run: Any, options: Any):
        self.run, self.options = run, options
        self.initial: dict[str, Any] | None = None  # full fine-tuning: the pre-trained matrices (CPU copies)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or is_adapted(model) or not state.is_world_process_zero:
            return
        self.initial = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
                        if intruders.selected(name, p.shape, self.options.intruders_include)}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step % self.options.intruders_every or not state.is_world_process_zero:
            return
        report = intruders.analyze(self.pairs(model), k=self.options.intruders_k,
                                   epsilons=[self.options.intruders_epsilon])
        epsilon = report.epsilons[0]
        logs = {"intruders/total": float(report.total(epsilon))}
        logs.update({f"intruders/{kind}": float(n) for kind, n in sorted(report.by("kind", epsilon).items())})
        log_during_step(self.run.trainer, logs)

    def pairs(self, model: Any):
        if self.initial is None:
            return intruders.adapter_pair(model, self.options.intruders_include)
        params = dict(model.named_parameters())
        return ((name, w0, params[name]) for name, w0 in self.initial.items())
