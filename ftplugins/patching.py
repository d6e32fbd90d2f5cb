"""Scoped, reversible activation of plugins for the trainer classes a script builds.

Inside :func:`plugins_active`, ``trl.SFTTrainer`` (and the other trainer classes listed in
``TRAINERS``, under every module path a script may import them from) are replaced by composed
classes; on exit the originals are put back. ``ftplugins.train`` and ``ftplugins.run`` both use
it, so a TRL script runs exactly as written, with the plugins switched on.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .composition import compose_run
from .context import Run
from .errors import FtpluginsError

# Class name -> module paths it is importable from (the defining module last).
TRAINERS: dict[str, tuple[str, ...]] = {
    "SFTTrainer": ("trl", "trl.trainer", "trl.trainer.sft_trainer"),
    "DPOTrainer": ("trl", "trl.trainer", "trl.trainer.dpo_trainer"),
    "GRPOTrainer": ("trl", "trl.trainer", "trl.trainer.grpo_trainer"),
    "RLOOTrainer": ("trl", "trl.trainer", "trl.trainer.rloo_trainer"),
    "KTOTrainer": ("trl", "trl.trainer", "trl.trainer.kto_trainer"),
    "RewardTrainer": ("trl", "trl.trainer", "trl.trainer.reward_trainer"),
    # Patched last: TRL's classes above were created from the original Trainer.
    "Trainer": ("transformers", "transformers.trainer"),
}

#: Trainer classes of optional families, patched like those above when their module is already imported, else as
#: soon as a script imports it inside :func:`plugins_active` (importing it up front would import diffusers, seconds,
#: into every wrapped script, and fail where the extra is not installed). The package calls :func:`family_imported`.
DEFERRED: dict[str, tuple[str, ...]] = {
    "DiffusionTrainer": ("ftplugins.diffusion", "ftplugins.diffusion.trainer"),
}

#: While plugins are active: callbacks waiting for a deferred family's import, and the classes replaced.
_waiting: list[Callable[[str], None]] = []
_originals: dict[str, type] = {}


def patched_names(plugin: Any) -> list[str]:
    """The ``module.Class`` names ``ftplugins.run`` replaces for ``plugin`` (``ftplugins info``)."""
    allowed = getattr(plugin, "trainers", None)
    return [f"{mods[0]}.{name}" for name, mods in {**DEFERRED, **TRAINERS}.items()
            if not allowed or name in allowed or ("Trainer" in allowed and name in TRAINERS)]


@contextlib.contextmanager
def plugins_active(run: Run, names: list[str] | None = None) -> Iterator[dict[str, type]]:
    """Replace the trainer classes ``names`` (default: all of ``TRAINERS`` and ``DEFERRED``) while the block runs.

    Yields the composed classes by name (a deferred one joins when its module is imported). ``trainer_mixins`` is
    called once for all of them.
    """
    paths = {**DEFERRED, **TRAINERS}  # the deferred families subclass Trainer: patched before it
    names = [name for name in paths if name in (names or paths)]
    deferred = [name for name in names if name in DEFERRED and DEFERRED[name][-1] not in sys.modules]
    originals = {name: getattr(importlib.import_module(paths[name][-1]), name) for name in names
                 if name not in deferred}
    mixins = run.call("trainer_mixins")
    composed = {name: compose_run(cls, run, mixins) for name, cls in originals.items()}
    undo: list[tuple[Any, str, bool, Any]] = []

    def patch(name: str) -> None:
        for module_name in paths[name]:
            module = importlib.import_module(module_name)
            had = name in vars(module)
            undo.append((module, name, had, vars(module).get(name)))
            setattr(module, name, composed[name])

    def on_import(package: str) -> None:
        for name in [n for n in deferred if DEFERRED[n][0] == package]:
            deferred.remove(name)
            originals[name] = getattr(sys.modules[DEFERRED[name][-1]], name)
            composed[name] = compose_run(originals[name], run, mixins)
            patch(name)

    saved_originals = dict(_originals)
    try:
        for name in originals:
            patch(name)
        _originals.update({name: cls for name, cls in originals.items() if name not in _originals})
        if deferred:
            _waiting.append(on_import)
        yield composed
    finally:
        if on_import in _waiting:
            _waiting.remove(on_import)
        _originals.clear()
        _originals.update(saved_originals)
        for module, name, had, previous in reversed(undo):
            if had:
                setattr(module, name, previous)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(module, name)


def family_imported(package: str) -> None:
    """Called by a :data:`DEFERRED` family's package at the end of its import: patch its trainer classes now."""
    for callback in list(_waiting):
        callback(package)


def unpatched(name: str, current: type) -> type:
    """The class ``name`` as its library defines it, even while :func:`plugins_active` replaces it: a deferred
    family imported inside a wrapped script must subclass transformers' own ``Trainer``, not the composed one (whose
    hooks would then run twice, and which would outlive the block)."""
    return _originals.get(name, current)


def import_patched(module_name: str) -> Any:
    """Import ``module_name`` anew, inside :func:`plugins_active`: names its top level imports
    (``from trl import SFTTrainer``) are bound to the composed classes, whether the module looks the
    trainer up at call time or at import. ``sys.modules`` keeps the module it had (if any), so the
    patch leaves nothing behind."""
    saved = sys.modules.pop(module_name, None)
    try:
        return importlib.import_module(module_name)
    finally:
        if saved is not None:
            sys.modules[module_name] = saved
        else:
            sys.modules.pop(module_name, None)


def require_trainer_built(run: Run, runs_before: int) -> None:
    """No silent no-ops: a wrapped script that built no patched trainer gets an error."""
    if run.state.get("_instances", 0) == runs_before and run.plugins:
        raise FtpluginsError(
            "the script finished without building any trainer ftplugins patches "
            f"({', '.join({**DEFERRED, **TRAINERS})}), so the plugins {', '.join(p.name for p in run.plugins)} had no effect. "
            "Build the trainer from one of those classes, or use ftplugins.compose in Python."
        )
