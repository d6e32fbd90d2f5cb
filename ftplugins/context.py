"""The run context handed to every hook, and the one place that calls hooks.

A :class:`Run` holds the selected plugins (in the user's order), their options, and what the
trainer knows about the run (arguments, processing class, the trainer itself once built).
:meth:`Run.call` is the only caller of hooks: it calls the implementing plugins in order and
combines their answers as the hook's spec says (see :mod:`ftplugins.hookspecs`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import FtpluginsError, HookConflictError

logger = logging.getLogger("ftplugins")


def tracing() -> bool:
    return os.environ.get("FTPLUGINS_TRACE", "") not in ("", "0", "false", "False")


@dataclass
class Run:
    """One run's plugins, options and training objects.

    Attributes:
        plugins: the selected plugin objects, in call order.
        options: plugin name -> options dataclass instance (or ``None``).
        trainer_cls: the composed trainer class.
        args: the trainer's ``TrainingArguments`` (set when the trainer is built).
        processing_class: the tokenizer / processor handed to the trainer, if any.
        model: the model handed to the trainer (loaded first when a path was given), from
            ``peft_config`` on; data hooks use it to find the tokenizer of a path-only run.
        trainer: the trainer, once its base ``__init__`` has run.
        state: scratch space for plugins, keyed by plugin name by convention.
    """

    plugins: list[Any]
    options: dict[str, Any]
    trainer_cls: type | None = None
    args: Any = None
    processing_class: Any = None
    model: Any = None
    trainer: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    manager: pluggy.PluginManager | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.manager is None:
            self.manager = make_manager(self.plugins)

    def fork(self, **fields) -> Run:
        """A fresh run with the same plugins and options (one per trainer instance)."""
        self.state["_instances"] = self.state.get("_instances", 0) + 1
        return Run(plugins=self.plugins, options=self.options, manager=self.manager, **fields)

    def options_for(self, plugin: Any) -> Any:
        name = plugin if isinstance(plugin, str) else plugin.name
        return self.options.get(name)

    @property
    def trainer_name(self) -> str:
        return self.trainer_cls.__name__ if self.trainer_cls else ""

    def has_base(self, class_name: str) -> bool:
        """Whether the trainer derives from a class called ``class_name`` (e.g. ``SFTTrainer``)."""
        return self.trainer_cls is not None and any(c.__name__ == class_name for c in self.trainer_cls.__mro__)

    @property
    def world_size(self) -> int:
        return int(getattr(self.args, "world_size", 1) or 1)

    def call(self, hook: str, **kwargs) -> Any:
        """Call ``hook`` on every implementing plugin in order and combine the answers."""
        combine, arg = hookspecs.COMBINE[hook]
        impls = implementations(self.manager, hook)
        kwargs["run"] = self
        if combine == "wrap":
            return _wrap(impls, hook, kwargs, arg)
        if combine == "chain":
            value = kwargs[arg]
            for plugin, func in impls:
                result = invoke(plugin, func, hook, {**kwargs, arg: value})
                if result is not None:
                    value = result
            return value
        answers = [(plugin, invoke(plugin, func, hook, kwargs)) for plugin, func in impls]
        if combine == "all":
            return None
        if combine == "any":
            return any(bool(answer) for _, answer in answers)
        if combine == "enter":
            return _enter_in_order([answer for _, answer in answers if answer is not None])
        if combine == "concat":
            out: list = []
            for _, answer in answers:
                out.extend(answer or [])
            return out
        given = [(p, a) for p, a in answers if a is not None]
        if combine == "single":
            if len(given) > 1:
                names = " and ".join(p.name for p, _ in given)
                raise HookConflictError(
                    f"plugins {names} both answer `{hook}`, which allows one answer per run; "
                    f"select only one of them."
                )
            return given[0][1] if given else None
        if combine == "merge":
            merged: dict = {}
            owner: dict = {}
            for plugin, answer in given:
                for key, value in answer.items():
                    if key in merged and merged[key] != value:
                        raise HookConflictError(
                            f"plugins {owner[key]} and {plugin.name} set `{hook}` key {key!r} to different "
                            f"values ({merged[key]!r} vs {value!r}); select only one of them."
                        )
                    merged[key], owner[key] = value, plugin.name
            return merged
        raise FtpluginsError(f"hook {hook} has unknown combine rule {combine!r}")


def make_manager(plugins: list[Any]) -> pluggy.PluginManager:
    """Register ``plugins`` in order; a misspelled hook name, or an implementation :meth:`Run.call`
    could not honour, fails here, loudly."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin, name=plugin.name)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise FtpluginsError(f"{exc}; valid hooks are: {', '.join(hookspecs.ORDER)}") from None
    for hook in hookspecs.ORDER:
        for impl in getattr(manager.hook, hook).get_hookimpls():
            _check_honourable(impl, hook)
    return manager


#: pluggy hookimpl options that Run.call does not implement: plugins are called in the user's order
#: and combined by the spec's rule, so a wrapper or a priority would silently do nothing.
UNSUPPORTED_IMPL_OPTIONS = {
    "wrapper": "use a `wrap` or `enter` hook (compute_loss, phase) to run code around a step",
    "hookwrapper": "use a `wrap` or `enter` hook (compute_loss, phase) to run code around a step",
    "tryfirst": "plugins are called in the order the user lists them (--plugins a,b)",
    "trylast": "plugins are called in the order the user lists them (--plugins a,b)",
}


def _check_honourable(impl: Any, hook: str) -> None:
    name = getattr(impl.plugin, "name", impl.plugin_name)
    for option, instead in UNSUPPORTED_IMPL_OPTIONS.items():
        if getattr(impl, option, False):
            raise FtpluginsError(
                f"plugin {name}: @hookimpl({option}=True) on `{hook}` is not supported by ftplugins; drop "
                f"{option}=True ({instead})."
            )
    params = inspect.signature(impl.function).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) for p in params):
        raise FtpluginsError(
            f"plugin {name}: `{hook}` takes positional-only or *args parameters, but hooks are called with keyword "
            f"arguments only; name the arguments it uses (e.g. `def {hook}(self, run)`), and decorate with "
            "functools.wraps so a wrapper shows the wrapped function's signature."
        )


def implementations(manager: pluggy.PluginManager, hook: str) -> list[tuple[Any, Any]]:
    """(plugin, function) pairs in registration order (pluggy itself calls LIFO)."""
    caller = getattr(manager.hook, hook)
    return [(impl.plugin, impl.function) for impl in caller.get_hookimpls()]


def invoke(plugin: Any, func: Any, hook: str, kwargs: dict) -> Any:
    wanted = _argnames(func)
    result = func(**(kwargs if wanted is None else {k: v for k, v in kwargs.items() if k in wanted}))
    if tracing():
        print(f"[ftplugins] {hook} -> {plugin.name}: {_short(result)}", file=sys.stderr, flush=True)
    return result


def _argnames(func: Any) -> set[str] | None:
    """The keyword arguments ``func`` takes (``None``: any, it has ``**kwargs``). ``inspect.signature``
    follows ``functools.wraps``, so a decorated implementation gets its wrapped function's arguments."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _wrap(impls: list[tuple[Any, Any]], hook: str, kwargs: dict, arg: str) -> Any:
    """Call a ``wrap`` hook: plugin i gets ``inner`` running plugins i+1.. and, last, ``kwargs[arg]``."""
    innermost = kwargs[arg]

    def layer(index: int, current: dict) -> Any:
        if index == len(impls):
            return innermost(**{k: v for k, v in current.items() if k not in ("run", arg)})
        plugin, func = impls[index]

        def inner(**changes: Any) -> Any:
            unknown = set(changes) - set(current) | ({"run", arg} & set(changes))
            if unknown:
                raise FtpluginsError(f"plugin {plugin.name} called `{hook}`'s inner with {sorted(unknown)}; it takes "
                                     f"{sorted(set(current) - {'run', arg})}")
            return layer(index + 1, {**current, **changes})

        result = invoke(plugin, func, hook, {**current, arg: inner})
        if result is None:
            raise FtpluginsError(f"plugin {plugin.name}'s `{hook}` returned None; return {arg}() to keep the result "
                                 "of the rest of the chain, or the value that replaces it.")
        return result

    return layer(0, kwargs)


@contextlib.contextmanager
def _enter_in_order(managers: list[Any]):
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def _short(value: Any) -> str:
    text = repr(value) if value is None or isinstance(value, (dict, list, str, int, float)) else type(value).__name__
    return text if len(text) < 120 else text[:117] + "..."
