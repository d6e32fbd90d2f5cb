"""The plugin base class: what a method declares about itself.

A plugin is an object with ``name``, ``summary``, ``paper`` and ``options`` (a dataclass whose
fields are all prefixed with ``<name>_``) and any number of methods decorated with
:data:`hookimpl`. Subclass :class:`Plugin` and register an instance under the entry-point group
``ftplugins``. This module imports nothing heavy, so listing plugins stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, ClassVar

import pluggy

from .hookspecs import ORDER, PROJECT

hookimpl = pluggy.HookimplMarker(PROJECT)

#: How ``ftplugins list`` / ``info`` show a plugin without a paper.
NO_PAPER = "\u2014"

#: ``Plugin.trainers`` of a plugin for text (language) models on any transformers / TRL trainer: ``Trainer`` covers
#: every trainer built on it except trainer families that must be named (``DiffusionTrainer``); TRL's are listed so
#: that readers (and ``ftplugins info``) see them.
TEXT_TRAINERS = ("SFTTrainer", "DPOTrainer", "GRPOTrainer", "Trainer")

#: Distributed set-ups a plugin may declare in ``Plugin.distributed``.
DISTRIBUTED_MODES = ("single", "ddp", "fsdp", "deepspeed")


class Plugin:
    """Base class of every ftplugins plugin.

    Attributes:
        name: the name users select (``--plugins NAME``); also the options prefix.
        summary: one line for ``ftplugins list``.
        paper: citation or URL of the method's paper; empty for a plugin that implements no paper
            (listed as :data:`NO_PAPER`).
        options: a dataclass type whose fields are ``<name>_*`` with defaults and
            ``metadata={"help": ...}``; ``None`` when the plugin has no options.
        requires: importable module name -> pip command that installs it.
        distributed: the distributed set-ups this plugin trains correctly under.
        distributed_refusals: mode -> why the plugin's maths cannot train that way (``{"fsdp": "keeps flat
            indices into whole weights, which FSDP shards"}``); the refusal and ``ftplugins info`` say it.
        trainers: names of trainer classes this plugin applies to (``SFTTrainer``), or
            ``None`` for any trainer.
        peft_type: the out-of-tree PEFT type this plugin owns (``"SSF"``), if any; once ``ftplugins`` is
            imported, :meth:`load_tuner` is called when ``peft`` is imported, so the type's adapters load
            through PEFT's and transformers' own loaders (and ``ftplugins.load_adapter``).
        trains: ``False`` for plugins used at generation / evaluation time, not in a training run
            (they carry no training recipe).
        claims: the roles of a run this plugin fills, one plugin per role (``{"trainable_set": "trains
            ..."}``, see :data:`ftplugins.combinations.ROLES`); two plugins claiming a role are refused.
        excludes: roles this plugin cannot run beside, with why (``{"adapter": "needs the base weights
            trained"}``); a plugin claiming one of them is refused.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    options: ClassVar[type | None] = None
    requires: ClassVar[dict[str, str]] = {}
    distributed: ClassVar[tuple[str, ...]] = ("single", "ddp")
    distributed_refusals: ClassVar[dict[str, str]] = {}
    trainers: ClassVar[tuple[str, ...] | None] = None
    peft_type: ClassVar[str | None] = None
    trains: ClassVar[bool] = True
    claims: ClassVar[dict[str, str]] = {}
    excludes: ClassVar[dict[str, str]] = {}

    def add_commands(self, subparsers: Any) -> None:
        """Add sub-commands to the ``ftplugins`` command (``argparse`` subparsers); default none.

        Keep imports inside: every ``ftplugins`` invocation calls this for every installed plugin.
        """

    def input_columns(self, options: Any, split: str) -> list[str]:
        """The columns this plugin reads from the ``split`` dataset as the user gives it, under ``options`` (its
        options instance, or ``None``); default none. Declarative: ``ftplugins check`` verifies a recipe's local
        dataset has them before a model loads (the plugin's ``transform_dataset`` still checks its rows)."""
        return []

    def builds_optimizer(self, options: Any) -> bool:
        """Whether this plugin's ``create_optimizer`` builds the optimizer under ``options`` (its options instance):
        an optimizer the user hands the trainer is refused only then. Default: whenever it implements the hook;
        a plugin whose hook answers ``None`` under some options says so here, and its hook asks this."""
        return is_hookimpl(getattr(self, "create_optimizer", None))

    def load_tuner(self) -> None:
        """Import the module that registers :attr:`peft_type` with PEFT (adapter plugins override)."""

    def contributes(self) -> list[str]:
        """The hooks this plugin implements, in run order."""
        return [hook for hook in ORDER if is_hookimpl(getattr(self, hook, None))]

    def missing(self) -> list[str]:
        """Pip commands for the optional dependencies that are not installed."""
        return [cmd for module, cmd in self.requires.items() if importlib.util.find_spec(module) is None]

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options)) if self.options else []

    def __repr__(self) -> str:
        return f"<ftplugins plugin {self.name!r}>"


def is_hookimpl(func: Any) -> bool:
    return func is not None and hasattr(func, f"{PROJECT}_impl")


def describe(plugin: Any) -> dict[str, Any]:
    """A JSON-ready description of a plugin (what ``ftplugins list --json`` prints)."""
    missing = plugin.missing() if hasattr(plugin, "missing") else []
    contributes = (
        plugin.contributes()
        if hasattr(plugin, "contributes")
        else [h for h in ORDER if is_hookimpl(getattr(plugin, h, None))]
    )
    return {
        "name": plugin.name,
        "summary": getattr(plugin, "summary", ""),
        "paper": getattr(plugin, "paper", "") or NO_PAPER,
        "contributes": contributes,
        "available": not missing,
        "missing": missing,
        "distributed": list(getattr(plugin, "distributed", ())),
        "trainers": list(plugin.trainers) if getattr(plugin, "trainers", None) else None,
    }
