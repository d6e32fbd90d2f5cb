"""``compose``: a trainer class with plugins switched on.

``compose(SFTTrainer, ["masked_thought"], masked_thought_ratio=0.2)`` returns a subclass of
``SFTTrainer`` whose ``__init__``, ``create_optimizer``, ``train`` and ``_save`` call the plugins'
hooks at the points documented in :mod:`ftplugins.hookspecs`. It also owns the output folder for the
run's life (:mod:`ftplugins.run_output`: a lock, ``ftplugins_run.json``) and makes every save whole
(staged final saves, checkpoints moved into place as one folder: :mod:`ftplugins.checkpoints`).
The command line (``ftplugins.train``) and the script wrapper (``ftplugins.run``) are built on this one
function, so every usage form runs the same code.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import weakref
from typing import Any

from . import registry
from .adapter_chain import stack as stack_on_chain
from .atomic import published_mark, staged_dir
from .checkpoints import has_checkpoints, last_complete_checkpoint, save_checkpoint_staged
from .compat import TrainerInternals
from .combinations import check_combination
from .context import Run, implementations
from .dataset_columns import check_columns
from .errors import FtpluginsError, HookConflictError
from .model_path import check_model_path
from .options import build_options
from .quantized_cpu import guard_cpu_4bit_packing
from .run_output import claim_output_dir, forget_previous_run
from .threads import limit_threads_for_small_model, training_on_cpu


_keep_process_group: list[bool] = []  # non-empty inside process_group_kept()


@contextlib.contextmanager
def process_group_kept():
    """While the block runs, a trainer's ``end()`` finishes its trackers but keeps the distributed process group."""
    _keep_process_group.append(True)
    try:
        yield
    finally:
        _keep_process_group.pop()


def compose(trainer_cls: type, plugins: list[Any], **options: Any) -> type:
    """Return ``trainer_cls`` with ``plugins`` (names or plugin objects) and their ``options``."""
    selected = registry.select(list(plugins))
    run = Run(plugins=selected, options=build_options(selected, options))
    return compose_run(trainer_cls, run)


def compose_run(trainer_cls: type, run: Run, mixins: list[type] | None = None) -> type:
    """Compose from a prepared :class:`Run` (``mixins`` lets callers reuse one hook answer).

    Conflicting plugins (:mod:`ftplugins.combinations`) are refused first, before any model loads. A mixin that
    several plugins contribute (a shared engine's) is put in once; mixins whose orders cannot be reconciled are a
    :class:`HookConflictError` naming the two plugins.
    """
    check_combination(run.plugins)
    if mixins is None:
        mixins = run.call("trainer_mixins")
    mixins = list(dict.fromkeys(mixins))
    names = "".join(p.name.title().replace("_", "") for p in run.plugins) or "NoPlugins"
    namespace = {"_ftplugins_template": run, "_ftplugins_base": trainer_cls, "__module__": trainer_cls.__module__}
    try:
        cls = type(f"{trainer_cls.__name__}With{names}", (*mixins, PluginTrainerMixin, trainer_cls), namespace)
    except TypeError as exc:
        raise _mixin_conflict(run, trainer_cls, exc) from None
    cls.__doc__ = f"{trainer_cls.__name__} with ftplugins: {', '.join(p.name for p in run.plugins)}."
    return cls


def _mixin_conflict(run: Run, trainer_cls: type, exc: TypeError) -> HookConflictError:
    """The pair of plugins whose trainer mixins cannot be put in one class (their orders contradict)."""
    owned = [(p, list(func(run=run) or [])) for p, func in implementations(run.manager, "trainer_mixins")]
    for i, (a, mixins_a) in enumerate(owned):
        for b, mixins_b in owned[i + 1 :]:
            try:
                type("Probe", (*dict.fromkeys([*mixins_a, *mixins_b]), trainer_cls), {})
            except TypeError:
                return HookConflictError(
                    f"plugins {a.name} and {b.name} contribute trainer mixins that cannot be combined in one class "
                    f"({exc}); select one of them."
                )
    return HookConflictError(f"the plugins' trainer mixins cannot be combined in one class: {exc}")


class PluginTrainerMixin(TrainerInternals):
    """Calls the hooks around a (TRL or transformers) trainer's own methods (the private ones through
    :class:`ftplugins.compat.TrainerInternals`)."""

    _ftplugins_template: Run
    _ftplugins_base: type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_ftplugins_run", None) is not None:
            # An outer composed class already ran the hooks (a class composed twice).
            super().__init__(*args, **kwargs)
            return
        signature = inspect.signature(self._ftplugins_base.__init__)
        bound = signature.bind(self, *args, **kwargs)
        call = dict(bound.arguments)
        call.pop(next(iter(signature.parameters)))  # self
        extra = _pop_var_keyword(signature, call)

        run = self._ftplugins_template.fork(
            trainer_cls=type(self), args=call.get("args"), processing_class=call.get("processing_class")
        )
        self._ftplugins_run = run
        self._ftplugins_staged_run_dir = None
        self._ftplugins_published = published_mark()
        if call.get("args") is not None:
            self._ftplugins_claim_output(call["args"])  # before any hook writes into it (s3ft's cache)
        # Trainers and distributed set-ups first: a plugin's own validate may assume its trainer (an LLM
        # plugin's checks on a DiffusionTrainer would fail with a message about the wrong thing).
        _check_trainer_supported(run)
        run.call("validate")
        _refuse_given_optimizer(run, call.get("optimizers"))
        run.call("patch_before_model_load")
        init_kwargs = run.call("model_init_kwargs")
        model = call.get("model")
        loaded_here = isinstance(model, str)
        if loaded_here:
            model = call["model"] = _load_model(model, run.args, init_kwargs, call.get("quantization_config"))
        elif init_kwargs:
            raise FtpluginsError(
                f"plugins set model loading options {sorted(init_kwargs)}, but the model was passed already "
                "loaded; pass the model path instead so the options can take effect."
            )

        run.model = model
        guard_cpu_4bit_packing(model, training=True)
        limit_threads_for_small_model(model, on_cpu=training_on_cpu(run.args))
        adapter = run.call("peft_config", model=model)
        if adapter is not None:
            if call.get("peft_config") is not None:
                raise FtpluginsError(
                    "a plugin contributes a PEFT adapter config, and a peft_config (e.g. --use_peft) was given "
                    "too; one adapter per run: drop --use_peft or the adapter plugin."
                )
            if "peft_config" in signature.parameters:
                call["peft_config"] = adapter
            else:
                import peft

                call["model"] = peft.get_peft_model(model, adapter)
        stacked = stack_on_chain(call["model"], call.get("peft_config"))  # a chained pipeline stage, else None
        if stacked is not None:
            call["model"], call["peft_config"] = stacked, None

        for key in ("train_dataset", "eval_dataset"):
            call[key] = _transform(run, key, call.get(key))

        rewards = run.call("reward_funcs")
        if rewards:
            if "reward_funcs" not in signature.parameters:
                raise FtpluginsError(
                    f"plugins contribute reward functions, but {self._ftplugins_base.__name__} takes none; "
                    "use a trainer with reward functions (grpo)."
                )
            given = call.get("reward_funcs") or []
            call["reward_funcs"] = [*(given if isinstance(given, list) else [given]), *rewards]

        more_callbacks = run.call("callbacks")
        if more_callbacks:
            call["callbacks"] = [*(call.get("callbacks") or []), *more_callbacks]

        with _loading_options_used(loaded_here, type(self)):
            super().__init__(**call, **extra)
        _warn_if_fsdp_was_not_applied(self)
        if call.get("args") is None:
            self._ftplugins_claim_output(self.args)
        run.trainer = self
        if run.processing_class is None:
            run.processing_class = getattr(self, "processing_class", None)
        run.args = self.args

        model = run.call("prepare_model", model=self.model)
        if model is not self.model:
            self.model = self.model_wrapped = model
        self.data_collator = run.call("data_collator", collator=self.data_collator)

    @property
    def ftplugins_run(self) -> Run:
        """The run context of this trainer (plugins, options, state)."""
        return self._ftplugins_run

    def create_optimizer(self, *args: Any, **kwargs: Any):
        if self.optimizer is None:
            optimizer = self._ftplugins_run.call("create_optimizer", model=self.model, args=self.args)
            if optimizer is not None:
                self.optimizer = optimizer
                return optimizer
        return super().create_optimizer(*args, **kwargs)

    def _ftplugins_claim_output(self, args: Any) -> None:
        """One run per output folder, held until :meth:`end`, the trainer's collection or the process's exit."""
        lock = claim_output_dir(args)
        self._ftplugins_lock = lock
        if lock is not None:
            weakref.finalize(self, lock.release)

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any):
        run = self._ftplugins_run
        resume_from_checkpoint = _complete_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if isinstance(resume_from_checkpoint, str) and os.path.isdir(resume_from_checkpoint):
            from .resume_world import check_resume_layout

            check_resume_layout(resume_from_checkpoint, self.args)
        if self.args.should_save:
            forget_previous_run(self.args.output_dir)
        with run.call("phase", trainer=self, phase="train"):
            run.call("train_begin", trainer=self, resume_from_checkpoint=resume_from_checkpoint)
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            run.call("post_train", trainer=self)
            if self.args.should_save:
                write_manifest(run, self.args.output_dir, self._ftplugins_published)
        return output

    def evaluate(self, *args: Any, **kwargs: Any):
        with self._ftplugins_run.call("phase", trainer=self, phase="evaluate"):
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with self._ftplugins_run.call("phase", trainer=self, phase="predict"):
            return super().predict(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
        trainers_own = super().compute_loss
        return self._ftplugins_run.call(
            "compute_loss", trainer=self, model=model, inputs=inputs, return_outputs=return_outputs,
            num_items_in_batch=num_items_in_batch,
            inner=lambda trainer, model, inputs, return_outputs, num_items_in_batch: trainers_own(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch),
        )

    def end(self, *args: Any, **kwargs: Any):
        """Wait for every process before the process group goes: rank 0 may still be writing the model,
        and a rank that tears the group down alone can abort the others (seen with gloo on CPU). Inside
        :func:`process_group_kept` (the stages of ``ftplugins pipeline``) the group stays for the next run: a group
        torn down and set up again between stages can hang when one rank reaches the next rendezvous first."""
        self.accelerator.wait_for_everyone()
        try:
            if _keep_process_group:
                for tracker in self.accelerator.trackers:
                    tracker.finish()
                return None
            return super().end(*args, **kwargs)
        finally:
            if getattr(self, "_ftplugins_lock", None) is not None:
                self._ftplugins_lock.release()

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The whole checkpoint folder is written staged and moved into place last (:mod:`ftplugins.checkpoints`);
        the plugins' ``save_checkpoint`` hook writes into it before that."""
        trainers_own = super()._save_checkpoint

        def save_with_plugins(model: Any, trial: Any) -> None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            trainers_own(model, trial)
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), name)  # inside the staging folder
            self._ftplugins_run.call("save_checkpoint", trainer=self, checkpoint=folder)

        save_checkpoint_staged(self, save_with_plugins, model, trial)

    def _get_output_dir(self, trial: Any) -> str:
        staged = getattr(self, "_ftplugins_staged_run_dir", None)
        return staged if staged is not None else super()._get_output_dir(trial=trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Stage the save in a temporary folder and move files into place atomically; a save into the run's
        own output folder (the final model) then updates ``ftplugins_run.json``, written last."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or getattr(self, "_ftplugins_staged_run_dir", None) is not None:
            return super()._save(output_dir, state_dict=state_dict)  # not saving, or inside a staged checkpoint
        with staged_dir(output_dir) as tmp:
            super()._save(tmp, state_dict=state_dict)
        if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):
            write_manifest(self._ftplugins_run, output_dir, self._ftplugins_published)


def _warn_if_fsdp_was_not_applied(trainer: Any) -> None:
    """An FSDP config where accelerate does not enable FSDP (accelerate 1.15 on CPU keeps multi-CPU DDP) trains the
    model unsharded without a word: say so, since the user asked for sharding."""
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and getattr(trainer, "is_fsdp_enabled", True) is False:
        logging.getLogger("ftplugins").warning(
            "an FSDP config was given, but accelerate did not enable FSDP on this set-up (on CPU it keeps "
            "multi-process DDP): the model trains unsharded, every process holding all of it. Use a GPU set-up for "
            "FSDP, or a DDP config to say what runs."
        )


def _complete_checkpoint(output_dir: str, resume: str | bool | None) -> str | bool | None:
    """``resume_from_checkpoint=True`` -> the last *whole* checkpoint; a given one must be whole."""
    from .checkpoints import checkpoint_problem

    if resume is True:
        found = last_complete_checkpoint(output_dir)
        if found is None and has_checkpoints(output_dir):
            raise FtpluginsError(f"no complete checkpoint in {output_dir!r} to resume from (see the warnings above); "
                                 "start without resume_from_checkpoint, or point it at a whole checkpoint")
        return found if found is not None else resume
    if isinstance(resume, str) and os.path.isdir(resume):
        problem = checkpoint_problem(resume)
        if problem:
            raise FtpluginsError(f"checkpoint {resume!r} is incomplete ({problem}); resume from an earlier one or "
                                 "with resume_from_checkpoint=True (picks the last whole checkpoint)")
    return resume


class _DropUsedLoadingOptionsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "but your model is already instantiated" not in record.getMessage()


@contextlib.contextmanager
def _loading_options_used(loaded_here: bool, trainer_cls: type):
    """Silence TRL's "you passed model_init_kwargs / quantization_config, but your model is already instantiated;
    they will be ignored" while the base trainer is built on a model *we* loaded from its path with exactly those
    options (the hooks need the model before the trainer exists): the warning would be false. It stays for a model
    the user built."""
    if not loaded_here:
        yield
        return
    loggers = {logging.getLogger(c.__module__) for c in trainer_cls.__mro__ if c.__module__.startswith("trl.")}
    quiet = _DropUsedLoadingOptionsWarning()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def write_manifest(run: Run, output_dir: str, since: int = 0) -> dict:
    """``ftplugins_run.json``: which plugins, options, world size and versions produced this output, and the
    files the run published into it (since ``since``, see :func:`ftplugins.atomic.published_mark`) with sha256."""
    import dataclasses
    from importlib.metadata import version

    from . import run_output

    record = {
        "plugins": [p.name for p in run.plugins],
        "options": {name: dataclasses.asdict(o) if o is not None else None for name, o in run.options.items()},
        "trainer": run.trainer_name,
        "world_size": run.world_size,
        "global_step": run.trainer.state.global_step if run.trainer is not None else None,
        "versions": {pkg: version(pkg) for pkg in ("ftplugins", "torch", "transformers", "trl", "peft", "accelerate")},
    }
    return run_output.write_manifest(output_dir, record, since)


def _pop_var_keyword(signature: inspect.Signature, call: dict) -> dict:
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return call.pop(name, {}) or {}
    return {}


def _refuse_given_optimizer(run: Run, optimizers: Any) -> None:
    """A user's ``optimizers=(optimizer, scheduler)`` would make the trainer skip ``create_optimizer``, so the
    plugins that build the optimizer would silently not apply."""
    if not optimizers or optimizers[0] is None:
        return
    owners = [plugin.name for plugin, _ in implementations(run.manager, "create_optimizer")
              if getattr(plugin, "builds_optimizer", lambda options: True)(run.options_for(plugin))]
    if owners:
        raise FtpluginsError(
            f"an optimizer was passed with optimizers=, and plugin(s) {', '.join(owners)} build the optimizer "
            "themselves (create_optimizer), which the trainer would then skip; drop optimizers= (set the learning "
            f"rate and its schedule in the training arguments) or drop {', '.join(owners)}."
        )


def _check_trainer_supported(run: Run) -> None:
    check_plugins_supported(run, distributed_mode(run.args))


def check_plugins_supported(run: Run, mode: str) -> None:
    """Refuse a plugin that does not apply to the run's trainer or cannot train in distributed ``mode``."""
    for plugin in run.plugins:
        allowed = getattr(plugin, "trainers", None)
        # A trainer family (DiffusionTrainer) takes only the plugins that name it: "Trainer" means transformers'
        # Trainer and the text trainers built on it, not a denoiser that merely reuses its loop.
        family = getattr(run.trainer_cls, "ftplugins_family", None)
        if allowed and (not any(run.has_base(name) for name in allowed) or (family and family not in allowed)):
            raise FtpluginsError(
                f"plugin {plugin.name} applies to {', '.join(allowed)}, not to {run.trainer_name}; "
                f"use one of those trainers or drop {plugin.name}."
            )
    for plugin in run.plugins:
        supported = getattr(plugin, "distributed", ("single", "ddp"))
        if mode not in supported:
            why = (getattr(plugin, "distributed_refusals", None) or {}).get(mode)
            raise FtpluginsError(
                f"plugin {plugin.name} does not support {mode} training (it supports: {', '.join(supported)})"
                + (f": {why}" if why else "")
                + "; use a supported accelerate config, see `ftplugins info " + plugin.name + "`."
            )


def distributed_mode(args: Any) -> str:
    if args is None:
        return "single"
    if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        return "deepspeed"
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return "fsdp"
    return "ddp" if int(getattr(args, "world_size", 1) or 1) > 1 else "single"


def _transform(run: Run, key: str, dataset: Any) -> Any:
    if dataset is None:
        return None
    if key == "train_dataset":
        dataset = run.call("transform_dataset", dataset=dataset, split="train")
        check_columns(run.trainer_cls, dataset, "train")
        return dataset
    if isinstance(dataset, dict):
        out = {}
        for name, split in dataset.items():
            out[name] = run.call("transform_dataset", dataset=split, split=name)
            check_columns(run.trainer_cls, out[name], name)
        return type(dataset)(out)
    dataset = run.call("transform_dataset", dataset=dataset, split="eval")
    check_columns(run.trainer_cls, dataset, "eval")
    return dataset


def _load_model(path: str, args: Any, plugin_kwargs: dict, quantization_config: Any) -> Any:
    """Load ``path`` the way TRL does, with the plugins' ``model_init_kwargs`` merged in."""
    from .compat import create_model_from_path

    kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    kwargs.update(plugin_kwargs)
    check_model_path(path, kwargs.get("revision"))
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if args is not None and args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", getattr(args, "trust_remote_code", False))
    if args is not None and hasattr(args, "model_init_kwargs"):
        # The reference model of DPO-style trainers is loaded from the same path with these kwargs.
        args.model_init_kwargs = {**(args.model_init_kwargs or {}), **plugin_kwargs}
    return create_model_from_path(path, **kwargs)
