"""The two phases of LP-FT: which parameters are the head, and the callback that switches at a step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError

#: The module names PEFT treats as sequence-classification heads (``PeftModelForSequenceClassification``).
CLASSIFIER_NAMES = ("classifier", "score")


def head_modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The head modules of ``model`` by path: those named ``names`` (a path or its last parts); with no names the
    classification heads, else the output embeddings."""
    wanted = tuple(names) or CLASSIFIER_NAMES
    found = {path: module for path, module in model.named_modules()
             if any(path == name or path.endswith("." + name) for name in wanted)}
    found = {p: m for p, m in found.items() if not any(p.startswith(q + ".") for q in found)}  # outermost only
    if found or names:
        return found
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {path: module for path, module in model.named_modules() if module is output and output is not None}


Parameters = list[torch.nn.Parameter]


def split_head(model: torch.nn.Module, names: Sequence[str]) -> tuple[Parameters, Parameters]:
    """(head, body): the trainable parameters of ``model`` inside its head, and the other trainable ones."""
    heads = head_modules(model, names)
    looked_for = f"modules named {', '.join(names)}" if names else (
        f"modules named {', '.join(CLASSIFIER_NAMES)} or the output embeddings")
    kind = type(model).__name__
    if not heads:
        raise FtpluginsError(f"lp_ft: {kind} has no head ({looked_for}); name its head modules with "
                             "--lp_ft_head NAME.")
    in_head = {id(p) for module in heads.values() for p in module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for p in trainable if id(p) in in_head]
    body = [p for p in trainable if id(p) not in in_head]
    if not head:
        raise FtpluginsError(f"lp_ft: the head of {kind} ({', '.join(heads)}) does not train; with a PEFT adapter add "
                             f"it to the adapter config's modules_to_save (e.g. modules_to_save=['{_last(heads)}']).")
    if not body:
        raise FtpluginsError(f"lp_ft: only the head of {kind} ({', '.join(heads)}) trains, so there is nothing to "
                             "fine-tune after linear probing; unfreeze the model or give the trainer an adapter.")
    return head, body


def _last(heads: dict[str, torch.nn.Module]) -> str:
    return next(iter(heads)).split(".")[-1]


def probe_steps(ratio: float, steps: int, max_steps: int) -> int:
    """Optimizer steps of linear probing in a run of ``max_steps``."""
    if steps > max_steps:
        raise FtpluginsError(f"--lp_ft_probe_steps {steps}: the run has only {max_steps} optimizer steps; use at "
                             f"most {max_steps} (all of them = linear probing alone), or lp_ft_probe_ratio.")
    return steps or math.ceil(ratio * max_steps)


def restart_at(scheduler, args, switch: int, max_steps: int) -> None:
    """Make ``scheduler`` (the run's, a ``LambdaLR``) give the steps from ``switch`` on the run's schedule afresh:
    its warm-up and decay over ``max_steps - switch`` steps, as a run of that length would; the multiplier before
    the switch is 1 (the probing steps run at their own rate). Plain functions, so the scheduler's checkpoint stays
    free of them: a resumed run rebuilds them here from the same arguments."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler

    if not isinstance(scheduler, LambdaLR):
        raise FtpluginsError(f"--lp_ft_restart_schedule: the run's scheduler ({type(scheduler).__name__}, "
                             f"lr_scheduler_type {args.lr_scheduler_type!r}) is not a step-wise LambdaLR; use a "
                             "schedule such as linear, cosine or constant_with_warmup, or drop the option.")
    steps = max(1, max_steps - switch)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only to build the schedule's function
    fresh = get_scheduler(args.lr_scheduler_type, probe, num_warmup_steps=args.get_warmup_steps(steps),
                          num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    inner = fresh.lr_lambdas[0]

    def shifted(step: int) -> float:
        return 1.0 if step < switch else inner(step - switch)

    scheduler.lr_lambdas = [shifted for _ in scheduler.lr_lambdas]
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * shifted(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class LinearProbeThenFineTune(TrainerCallback):
    """Freezes the body while ``global_step`` is below the switch step, and unfreezes it from there on.

    Decided from ``state.global_step`` at every step's start, so a run resumed on either side of the switch
    continues in the phase it was in."""

    def __init__(self, run, key: str, ratio: float, steps: int, probe_lr: float = 0.0, restart: bool = False):
        self.run, self.key, self.ratio, self.steps, self.probe_lr = run, key, ratio, steps, probe_lr
        self.restart = restart
        self.switch = None
        self.scheduled: list[float] | None = None

    def _body(self) -> list[torch.nn.Parameter]:
        return self.run.state[self.key][1]

    def _apply(self, global_step: int) -> None:
        probing = global_step < self.switch
        for p in self._body():
            p.requires_grad_(not probing)

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.switch = probe_steps(self.ratio, self.steps, state.max_steps)
        self.run.state[self.key + "_switch"] = self.switch
        if self.restart:
            restart_at(lr_scheduler, args, self.switch, state.max_steps)
        self._apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.probe_lr and state.global_step < self.switch:
            self.scheduled = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = self.probe_lr

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.scheduled is not None:  # the scheduler steps next, from the rates it set
            for group, lr in zip(optimizer.param_groups, self.scheduled):
                group["lr"] = lr
            self.scheduled = None

    def on_train_end(self, args, state, control, **kwargs):
        for p in self._body():  # leave the model as the run found it
            p.requires_grad_(True)
