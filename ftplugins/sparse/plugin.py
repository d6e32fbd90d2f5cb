"""The plugin base of methods that train a subset of weight entries on the sparse engine.

A method names its training module (``training_module``), which provides ``prepare(model) ->
targets`` (freeze everything else, return what trains), ``build_optimizer(model, args, options,
targets)`` (a :class:`~ftplugins.sparse.optimizer.SparseAdamW`) and ``save_delta_of(trainer,
options)``; this base wires them to the hooks, adds the engine's Trainer glue (``grad_norm``,
``skip_ddp_wrapper``, :mod:`ftplugins.sparse.trainer`) and refuses fp16 mixed precision. Imports
nothing heavy: the training module is imported when a hook runs.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl


class SparseEngineHooks:
    """The engine's Trainer glue as hooks, for every plugin that trains on SparseAdamW (LIFT, SaRA, LT-SFT):
    no DDP wrapper (the engine averages compact gradients itself) and the gradient norm the engine measured."""

    @hookimpl
    def skip_ddp_wrapper(self, run, trainer):
        from .trainer import skip_ddp_wrapper

        return skip_ddp_wrapper(trainer)

    @hookimpl
    def grad_norm(self, run, trainer):
        from .trainer import grad_norm

        return grad_norm(trainer)

    @hookimpl
    def save_checkpoint(self, run, trainer, checkpoint):
        from .resume import save_rank_state

        save_rank_state(trainer, checkpoint)

    @hookimpl
    def load_optimizer_state(self, run, trainer, checkpoint):
        from .resume import load_rank_state

        load_rank_state(self.name, trainer, checkpoint)


class SparseMethodPlugin(SparseEngineHooks, Plugin):
    """Hooks shared by LIFT, SaRA, ...: ``validate``, ``prepare_model``, ``create_optimizer``,
    ``skip_ddp_wrapper``, ``grad_norm`` and ``post_train`` (writes the sparse delta when ``<name>_save_delta``)."""

    #: Dotted path of the module with ``prepare``, ``build_optimizer`` and ``save_delta_of``.
    training_module: ClassVar[str] = ""
    distributed: ClassVar[tuple[str, ...]] = ("single", "ddp", "fsdp")
    distributed_refusals: ClassVar[dict[str, str]] = {}

    def training(self) -> Any:
        return importlib.import_module(self.training_module)

    @hookimpl
    def validate(self, run):
        args = run.args
        if args is not None and getattr(args, "fp16", False):
            raise FtpluginsError(
                f"{self.name} with fp16=True: fp16 mixed precision scales the loss and unscales .grad tensors, which "
                "the sparse engine replaces by compact gradients, so the scaler cannot work; use bf16=True or fp32 "
                "(an fp16 *model* is fine: it trains through fp32 master copies)."
            )
        options = run.options_for(self)
        if args is not None and getattr(options, f"{self.name}_step_in_backward", False):
            flag = f"--{self.name}_step_in_backward"
            if (getattr(args, "max_grad_norm", 0) or 0) > 0:
                raise FtpluginsError(f"{flag} updates each weight during the backward, before a global gradient norm "
                                     f"exists, so it cannot clip: add --max_grad_norm 0 (got {args.max_grad_norm}).")
            if getattr(args, "gradient_accumulation_steps", 1) > 1:
                raise FtpluginsError(f"{flag} updates each weight as its gradient arrives, so micro-batches cannot "
                                     "accumulate: use --gradient_accumulation_steps 1 (a larger batch instead), or "
                                     f"drop {flag}.")
            from ftplugins.composition import distributed_mode

            mode = distributed_mode(args)
            if mode not in ("single", "fsdp"):
                from .optimizer import STEP_IN_BACKWARD_DDP

                raise FtpluginsError(f"{flag} under {mode}: {STEP_IN_BACKWARD_DDP} (here: drop {flag}).")

    @hookimpl
    def prepare_model(self, run, model):
        run.state[self.name] = {"targets": self.training().prepare(model)}
        return model

    @hookimpl
    def create_optimizer(self, run, model, args):
        state = run.state.get(self.name)
        if state is None:
            raise FtpluginsError(f"{self.name}: create_optimizer ran before prepare_model; build the trainer with "
                                 "ftplugins.compose so that the hooks run in order")
        from .trainer import around_optimizer

        return around_optimizer(
            model, lambda: self.training().build_optimizer(model, args, run.options_for(self), state["targets"]))

    @hookimpl
    def post_train(self, run, trainer):
        options = run.options_for(self)
        if getattr(options, f"{self.name}_save_delta", False):
            self.training().save_delta_of(trainer, options)
