"""``compose``: a trainer class with plugins switched on.

``compose(SFTTrainer, ["masked_thought"], masked_thought_ratio=0.2)`` returns a subclass of
``SFTTrainer`` whose ``__init__``, ``create_optimizer``, ``train`` and ``_save`` call the plugins'
hooks at the points documented in :mod:`ftplugins.hookspecs`. The command line (``ftplugins.train``)
and the script wrapper (``ftplugins.run``) are built on this one function, so every usage form
runs the same code.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from . import registry
from .atomic import staged_dir
from .context import Run
from .dataset_columns import check_columns
from .errors import FtpluginsError
from .options import build_options
from .model_path import check_model_path
from .threads import limit_threads_for_small_model, training_on_cpu


def compose(trainer_cls: type, plugins: list[Any], **options: Any) -> type:
    """Return ``trainer_cls`` with ``plugins`` (names or plugin objects) and their ``options``."""
    selected = registry.select(list(plugins))
    run = Run(plugins=selected, options=build_options(selected, options))
    return compose_run(trainer_cls, run)


def compose_run(trainer_cls: type, run: Run, mixins: list[type] | None = None) -> type:
    """Compose from a prepared :class:`Run` (``mixins`` lets callers reuse one hook answer)."""
    if mixins is None:
        mixins = run.call("trainer_mixins")
    names = "".join(p.name.title().replace("_", "") for p in run.plugins) or "NoPlugins"
    namespace = {"_ftplugins_template": run, "_ftplugins_base": trainer_cls, "__module__": trainer_cls.__module__}
    cls = type(f"{trainer_cls.__name__}With{names}", (*mixins, PluginTrainerMixin, trainer_cls), namespace)
    cls.__doc__ = f"{trainer_cls.__name__} with ftplugins: {', '.join(p.name for p in run.plugins)}."
    return cls


class PluginTrainerMixin:
    """Calls the hooks around a (TRL or transformers) trainer's own methods."""

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
        run.call("validate")
        _check_trainer_supported(run)
        run.call("patch_before_model_load")
        init_kwargs = run.call("model_init_kwargs")
        model = call.get("model")
        if isinstance(model, str):
            model = call["model"] = _load_model(model, run.args, init_kwargs, call.get("quantization_config"))
        elif init_kwargs:
            raise FtpluginsError(
                f"plugins set model loading options {sorted(init_kwargs)}, but the model was passed already "
                "loaded; pass the model path instead so the options can take effect."
            )

        run.model = model
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

        super().__init__(**call, **extra)
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

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        self._ftplugins_run.call("post_train", trainer=self)
        if self.args.should_save:
            write_manifest(self._ftplugins_run, self.args.output_dir)
        return output

    def end(self, *args: Any, **kwargs: Any):
        """Wait for every process before the process group goes: rank 0 may still be writing the model,
        and a rank that tears the group down alone can abort the others (seen with gloo on CPU)."""
        self.accelerator.wait_for_everyone()
        return super().end(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Stage the save in a temporary folder and move files into place atomically."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return super()._save(output_dir, state_dict=state_dict)
        with staged_dir(output_dir) as tmp:
            super()._save(tmp, state_dict=state_dict)


def write_manifest(run: Run, output_dir: str) -> None:
    """``ftplugins_run.json``: which plugins, options, world size and versions produced this output."""
    import dataclasses
    import json
    from importlib.metadata import version

    manifest = {
        "plugins": [p.name for p in run.plugins],
        "options": {name: dataclasses.asdict(o) if o is not None else None for name, o in run.options.items()},
        "trainer": run.trainer_name,
        "world_size": run.world_size,
        "global_step": run.trainer.state.global_step if run.trainer is not None else None,
        "versions": {pkg: version(pkg) for pkg in ("ftplugins", "torch", "transformers", "trl", "peft", "accelerate")},
    }
    with staged_dir(output_dir) as tmp:
        with open(os.path.join(tmp, "ftplugins_run.json"), "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)


def _pop_var_keyword(signature: inspect.Signature, call: dict) -> dict:
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return call.pop(name, {}) or {}
    return {}


def _check_trainer_supported(run: Run) -> None:
    for plugin in run.plugins:
        allowed = getattr(plugin, "trainers", None)
        if allowed and not any(run.has_base(name) for name in allowed):
            raise FtpluginsError(
                f"plugin {plugin.name} applies to {', '.join(allowed)}, not to {run.trainer_name}; "
                f"use one of those trainers or drop {plugin.name}."
            )
    mode = distributed_mode(run.args)
    for plugin in run.plugins:
        supported = getattr(plugin, "distributed", ("single", "ddp"))
        if mode not in supported:
            raise FtpluginsError(
                f"plugin {plugin.name} does not support {mode} training (it supports: {', '.join(supported)}); "
                "use a supported accelerate config, see `ftplugins info " + plugin.name + "`."
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
    from trl.trainer.utils import create_model_from_path

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
