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
from collections.abc import Iterator
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


def patched_names(plugin: Any) -> list[str]:
    """The ``module.Class`` names ``ftplugins.run`` replaces for ``plugin`` (``ftplugins info``)."""
    allowed = getattr(plugin, "trainers", None)
    return [f"{mods[0]}.{name}" for name, mods in TRAINERS.items() if not allowed or name in allowed]


@contextlib.contextmanager
def plugins_active(run: Run, names: list[str] | None = None) -> Iterator[dict[str, type]]:
    """Replace the trainer classes ``names`` (default: all of ``TRAINERS``) while the block runs.

    Yields the composed classes by name. ``trainer_mixins`` is called once for all of them.
    """
    names = list(names or TRAINERS)
    originals = {name: getattr(importlib.import_module(TRAINERS[name][-1]), name) for name in names}
    mixins = run.call("trainer_mixins")
    composed = {name: compose_run(cls, run, mixins) for name, cls in originals.items()}
    undo: list[tuple[Any, str, bool, Any]] = []
    try:
        for name in names:
            for module_name in TRAINERS[name]:
                module = importlib.import_module(module_name)
                had = name in vars(module)
                undo.append((module, name, had, vars(module).get(name)))
                setattr(module, name, composed[name])
        yield composed
    finally:
        for module, name, had, previous in reversed(undo):
            if had:
                setattr(module, name, previous)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(module, name)


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
            f"({', '.join(TRAINERS)}), so the plugins {', '.join(p.name for p in run.plugins)} had no effect. "
            "Build the trainer from one of those classes, or use ftplugins.compose in Python."
        )
