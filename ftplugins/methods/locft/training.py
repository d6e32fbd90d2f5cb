"""The torch side of LocFT-BF: exact module selection, per-sample loss, skip-able Adam, early stop."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError, UnsupportedModelError

logger = logging.getLogger("ftplugins.locft")


def module_names(spec: str) -> list[str]:
    return [name.strip() for name in spec.split(",") if name.strip()]


def find_modules(model: nn.Module, spec: str) -> dict[str, nn.Module]:
    """The modules named in ``spec``, by exact name (never substring: 'layers.2' is not 'layers.20')."""
    modules = dict(model.named_modules())
    found = {}
    for name in module_names(spec):
        if name not in modules:
            model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f"; closest names: {', '.join(close)}" if close else ""
            raise UnsupportedModelError(
                f"locft: model type {model_type!r} has no module named exactly {name!r} (--locft_modules; names are "
                f"matched exactly, as in model.named_modules()){hint}")
        found[name] = modules[name]
    return found


def prepare(model: nn.Module, spec: str) -> list[str]:
    """Freeze everything but the parameters of the named modules; returns their parameter names."""
    if getattr(model, "peft_config", None):
        raise FtpluginsError("locft fine-tunes the base model's own module, and this model carries a PEFT adapter; "
                             "drop --use_peft / the adapter plugin or the locft plugin.")
    modules = find_modules(model, spec)
    wanted = {id(p) for module in modules.values() for p in module.parameters()}
    if not wanted:
        raise UnsupportedModelError(f"locft: the module(s) {list(modules)} have no parameters to train")
    names = []
    for name, param in model.named_parameters():
        train = id(param) in wanted and param.is_floating_point()
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def configure_args(args: Any, options: Any) -> None:
    """Breadth-first on the Trainer: one update per minibatch of ``locft_batch_size`` edits."""
    if args is None:
        return
    if getattr(args, "gradient_accumulation_steps", 1) != 1:
        raise FtpluginsError(
            f"locft: gradient_accumulation_steps={args.gradient_accumulation_steps}; LocFT updates once per minibatch "
            "of --locft_batch_size edits and skips minibatches already learnt, so set gradient_accumulation_steps=1 "
            "(and a smaller --locft_batch_size if memory is short).")
    if args.per_device_train_batch_size != options.locft_batch_size:
        logger.warning("locft: per_device_train_batch_size %d -> %d (--locft_batch_size)",
                       args.per_device_train_batch_size, options.locft_batch_size)
        args.per_device_train_batch_size = options.locft_batch_size


class Monitor:
    """Minibatch losses of the current update and of the current epoch (shared by the trainer mixin,
    the optimizer and the early-stop callback)."""

    def __init__(self) -> None:
        self.batch: list[float] = []
        self.epoch: list[float] = []
        self.skipped = 0
        self.epoch_losses: list[float] = []

    def take_batch(self) -> float | None:
        if not self.batch:
            return None
        loss = sum(self.batch) / len(self.batch)
        self.batch.clear()
        self.epoch.append(loss)
        return loss


def monitor_of(run: Any) -> Monitor:
    state = run.state.setdefault("locft", {})
    if "monitor" not in state:
        state["monitor"] = Monitor()
    return state["monitor"]


class LocftAdam(torch.optim.Adam):
    """Adam (no weight decay) that skips the update of a minibatch whose loss is below ``skip_below``."""

    def __init__(self, params: Any, monitor: Monitor, skip_below: float, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.monitor, self.skip_below = monitor, float(skip_below)

    def step(self, closure=None):
        loss = self.monitor.take_batch()
        if loss is not None and loss < self.skip_below:
            self.monitor.skipped += 1
            return None
        return super().step(closure)


def build_optimizer(model: nn.Module, args: Any, options: Any, targets: list[str], monitor: Monitor) -> LocftAdam:
    params = dict(model.named_parameters())
    missing = [n for n in targets if n not in params]
    if missing:
        raise FtpluginsError(f"locft: the model no longer has the parameters it prepared, e.g. {missing[:2]}")
    trainable = [p for p in params.values() if p.requires_grad]
    if len(trainable) != len(targets):
        logger.warning("locft: %d parameter(s) outside --locft_modules are trainable (another plugin unfroze them)",
                       len(trainable) - len(targets))
    return LocftAdam(trainable, monitor, options.locft_skip_loss, lr=args.learning_rate,
                     betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=0.0)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled (target) tokens, averaged per sample, then over the samples that
    have target tokens."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    tokens = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                                               ignore_index=-100, reduction="none").view(targets.shape)
    counts = (targets != -100).sum(1)
    has = counts > 0
    if not bool(has.any()):
        return shifted.sum() * 0.0
    return (tokens.sum(1)[has] / counts[has]).mean()


def compute_loss(run: Any, model: Any, inputs: dict, return_outputs: bool = False) -> Any:
    """The per-sample target-only loss in place of the trainer's; records each training minibatch's loss for
    skipping and stopping."""
    labels = inputs["labels"]
    forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    outputs = model(**forward)
    loss = per_sample_loss(outputs.logits, labels)
    if model.training:
        monitor_of(run).batch.append(float(loss.detach()))
    return (loss, outputs) if return_outputs else loss


class EarlyStop(TrainerCallback):
    """Stop at the end of the first epoch whose mean minibatch loss is below ``threshold``."""

    def __init__(self, monitor: Monitor, threshold: float) -> None:
        self.monitor, self.threshold = monitor, float(threshold)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.monitor.epoch.clear()

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.monitor.epoch:
            return
        loss = sum(self.monitor.epoch) / len(self.monitor.epoch)
        self.monitor.epoch_losses.append(loss)
        if loss < self.threshold:
            logger.info("locft: epoch loss %.4g < %.4g: stopping at step %d", loss, self.threshold, state.global_step)
            control.should_training_stop = True
