"""Out-of-tree PEFT types: register them with PEFT, find them again when an adapter is loaded.

PEFT looks a method up by its ``peft_type`` string in three dicts of ``peft.mapping`` (config class,
tuner class, parameter prefix); ``get_peft_model``, ``PeftModel.from_pretrained`` and the state-dict
save/load functions all go through them. ``peft.utils.register_peft_method`` fills them but only
accepts members of the closed ``PeftType`` enum, so :func:`register_peft_type` writes the three
entries itself. A method's ``config`` module calls it at import.

Finding the owner of a saved adapter in a fresh process: a plugin that contributes a PEFT type
declares it as a class attribute ``peft_type = "SSF"`` and a method ``load_tuner()`` that imports
its config module (which registers the type). Plugin modules are cheap to import (no torch), and
PEFT's own mapping stays the one record of what is registered.

``import ftplugins`` calls :func:`register_when_peft_imported`: the moment ``peft`` finishes importing
(at once if it already has), every installed plugin that declares a ``peft_type`` has its tuner loaded,
so an adapter loads through PEFT's and transformers' *own* loaders (``PeftModel.from_pretrained``,
``AutoPeftModel*``, ``AutoModel*.from_pretrained`` on an adapter folder). ``import ftplugins`` itself
imports neither PEFT nor torch, so ``ftplugins list`` stays fast. :func:`load_adapter` checks the
saved type first (:func:`ensure_peft_type`), so a type that no installed plugin declares (or one whose
plugin failed to load or is disabled) is an error that names the declared types, not PEFT's KeyError.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import warnings
from typing import Any

from .errors import FtpluginsError, ModelPathError


class PeftTypeName(str):
    """The ``peft_type`` of an out-of-tree method: a plain string that also answers ``.value`` and
    ``.name`` like a ``PeftType`` member, because some PEFT and transformers code reads those."""

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return str(self)


def register_peft_type(peft_type: str, config_cls: type, tuner_cls: type, prefix: str) -> None:
    """Make ``peft_type`` known to PEFT. Registering the same classes again is a no-op."""
    from peft.utils import PeftType

    from .compat import peft_type_mappings

    PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING = peft_type_mappings()

    if peft_type in {member.value for member in PeftType}:
        raise FtpluginsError(f"peft_type {peft_type!r} is a built-in PEFT type; choose another name for the method.")
    if getattr(tuner_cls, "prefix", prefix) != prefix:
        raise FtpluginsError(f"{tuner_cls.__name__}.prefix is {tuner_cls.prefix!r}, registered as {prefix!r}.")
    known = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if known is not None and _qualname(known) != _qualname(config_cls):
        raise FtpluginsError(
            f"peft_type {peft_type!r} is already registered by {_qualname(known)}; "
            f"{_qualname(config_cls)} must use another name."
        )
    for other, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == prefix and other != peft_type:
            raise FtpluginsError(f"parameter prefix {prefix!r} is already used by PEFT type {other}; choose another.")
    # Same classes (or the same classes re-imported, e.g. after importlib.reload): (re)write the entries.
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix


def ensure_peft_type(peft_type: str) -> None:
    """Import the plugin that owns ``peft_type`` unless PEFT knows the type already (built-in or loaded)."""
    from . import registry
    from .compat import peft_type_mappings

    PEFT_TYPE_TO_CONFIG_MAPPING = peft_type_mappings()[0]

    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    declared, broken = [], []
    for name in registry.installed_names():
        try:
            plugin = registry.load(name)
        except Exception as exc:  # one broken plugin must not stop loading another plugin's adapter
            broken.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        owned = getattr(plugin, "peft_type", None)
        if owned is None:
            continue
        declared.append(f"{owned} ({name})")
        if owned == peft_type:
            plugin.load_tuner()
            if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
                raise FtpluginsError(
                    f"plugin {name} declares peft_type {peft_type!r}, but its load_tuner() registered nothing."
                )
            return
    hint = f" Plugins that failed to load: {'; '.join(broken)}." if broken else ""
    raise FtpluginsError(
        f"adapter type {peft_type!r} is neither a PEFT type nor declared by an installed ftplugins plugin "
        f"(declared: {', '.join(declared) or 'none'}); install the package that saved the adapter.{hint}"
    )


def register_installed_peft_types() -> None:
    """Load the tuner of every installed plugin that declares a ``peft_type`` not yet known to PEFT.

    Runs inside ``import peft``: a plugin that fails is reported as a warning naming it (its adapters
    then fail to load with :func:`ensure_peft_type`'s error), never as a failed ``import peft``.
    """
    from . import registry
    from .compat import peft_type_mappings

    PEFT_TYPE_TO_CONFIG_MAPPING = peft_type_mappings()[0]
    for name in registry.installed_names():
        try:
            plugin = registry.load(name)
            peft_type = getattr(plugin, "peft_type", None)
            if peft_type is not None and peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
                plugin.load_tuner()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break `import peft`
            warnings.warn(
                f"ftplugins: plugin {name} could not register its PEFT type ({type(exc).__name__}: {exc}); "
                f"adapters of that type will not load until it is fixed or disabled (FTPLUGINS_DISABLE={name}).",
                stacklevel=2,
            )


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs ``peft``'s own loader, then :func:`register_installed_peft_types`; then steps out of the way."""

    def __init__(self, loader: Any, hook: _PeftImportHook) -> None:
        self.loader, self.hook = loader, hook

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # leave no trace of the wrapper
        if self.hook in sys.meta_path:
            sys.meta_path.remove(self.hook)
        register_installed_peft_types()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)


class _PeftImportHook(importlib.abc.MetaPathFinder):
    """A meta-path finder that finds ``peft`` through the finders after it and wraps its loader in
    :class:`_RegisterAfterExec`; it removes itself once ``peft`` is imported. A mere ``find_spec("peft")``
    (transformers' ``is_peft_available``) gets the same wrapped spec and leaves the hook in place."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "peft" or self not in sys.meta_path:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1 :]:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader, self)
                return spec
        return None


def register_when_peft_imported() -> None:
    """Register the installed plugins' PEFT types now if PEFT is imported, else right after it is."""
    module = sys.modules.get("peft")
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        register_installed_peft_types()
    elif module is None and not any(isinstance(finder, _PeftImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportHook())


def read_peft_type(path: str) -> str:
    """The ``peft_type`` recorded in ``path/adapter_config.json`` (a local folder written by save_pretrained)."""
    config_file = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise ModelPathError(
            f"{path}: no adapter_config.json there; pass the folder that `save_pretrained` wrote (local folders only)."
        )
    with open(config_file) as f:
        peft_type = json.load(f).get("peft_type")
    if not peft_type:
        raise ModelPathError(f"{config_file} has no 'peft_type'; it was not written by PEFT's save_pretrained.")
    return peft_type


def load_adapter(model: Any, path: str, **kwargs: Any) -> Any:
    """Load the adapter saved in ``path`` onto ``model`` (a ``PeftModel``), whatever plugin defined it.

    ``kwargs`` go to ``peft.PeftModel.from_pretrained`` (``adapter_name``, ``is_trainable``, ...).
    """
    subfolder = kwargs.get("subfolder")
    ensure_peft_type(read_peft_type(os.path.join(path, subfolder) if subfolder else path))
    from peft import PeftModel

    from .quantized_cpu import guard_cpu_4bit_packing

    guard_cpu_4bit_packing(model, training=bool(kwargs.get("is_trainable", False)))
    return PeftModel.from_pretrained(model, path, **kwargs)


def peft_config(name: str, model: Any = None, **options: Any) -> Any:
    """The PEFT config plugin ``name`` contributes, e.g. ``SFTTrainer(..., peft_config=peft_config("ssf"))``.

    ``options`` are the plugin's options (``ssf_init="normal"``); ``model`` is handed to the hook for
    plugins whose config depends on the model.
    """
    from .context import Run
    from .options import build_options
    from .registry import select

    plugins = select([name])
    run = Run(plugins=plugins, options=build_options(plugins, options))
    config = run.call("peft_config", model=model)
    if config is None:
        raise FtpluginsError(
            f"plugin {name} contributes no PEFT adapter config; use it with ftplugins.compose(..., [{name!r}]) instead."
        )
    return config


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
