"""Discovery and selection of plugins through the ``ftplugins`` entry-point group.

Built-in methods register through the very same group as third-party packages, so there is one
path for both. Entry points are loaded only when a plugin is selected or listed; a plugin module's
top level must stay light (no torch import) so that ``ftplugins list`` is fast.
"""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import FtpluginsError, UnknownPluginError, did_you_mean
from .plugin import DISTRIBUTED_MODES

GROUP = "ftplugins"
_loaded: dict[str, Any] = {}


def disabled() -> set[str]:
    """Plugin names blocked by ``FTPLUGINS_DISABLE=a,b``."""
    return {n.strip() for n in os.environ.get("FTPLUGINS_DISABLE", "").split(",") if n.strip()}


def available_entry_points() -> dict[str, EntryPoint]:
    """Installed, not-disabled plugins by name (nothing imported yet)."""
    blocked = disabled()
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name not in blocked:
            found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def installed_names() -> list[str]:
    return list(available_entry_points())


def load(name: str) -> Any:
    """The plugin object registered under ``name``; a clear error when there is none."""
    if name in disabled():
        raise UnknownPluginError(f"--plugins {name}: the plugin is disabled by FTPLUGINS_DISABLE; unset it to use {name}.")
    if name in _loaded:
        return _loaded[name]
    eps = available_entry_points()
    if name not in eps:
        raise UnknownPluginError(
            f"--plugins {name}: no such plugin;{did_you_mean(name, eps)} "
            f"Installed: {', '.join(eps) or '(none)'}. `ftplugins list` shows them."
        )
    plugin = eps[name].load()
    if isinstance(plugin, type):
        plugin = plugin()
    check_plugin(plugin, source=f"entry point {eps[name].value}")
    if plugin.name != name:
        raise FtpluginsError(
            f"entry point {name!r} ({eps[name].value}) loads a plugin named {plugin.name!r}; "
            "the entry-point name must equal the plugin's name."
        )
    _loaded[name] = plugin
    return plugin


def describe_installed(name: str) -> dict[str, Any]:
    """``describe`` for listing: a plugin that fails to import is shown as unavailable, not fatal."""
    from .plugin import describe

    try:
        return describe(load(name))
    except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not break `list`
        ep = available_entry_points()[name]
        return {"name": name, "summary": f"(failed to load {ep.value})", "paper": "", "contributes": [],
                "available": False, "missing": [f"{type(exc).__name__}: {exc}"], "distributed": [], "trainers": None}


def check_plugin(plugin: Any, source: str = "") -> None:
    """Reject malformed plugin objects early, with the rule they break."""
    where = f" ({source})" if source else ""
    for attr in ("name", "summary"):
        if not isinstance(getattr(plugin, attr, None), str) or not getattr(plugin, attr):
            raise FtpluginsError(f"plugin {plugin!r}{where} must have a non-empty string attribute {attr!r}.")
    if not isinstance(getattr(plugin, "paper", ""), str):  # optional: utility plugins have no paper
        raise FtpluginsError(f"plugin {plugin.name!r}{where}: `paper` must be a string (a citation, or \"\" for none), "
                             f"not {type(plugin.paper).__name__}.")
    options = getattr(plugin, "options", None)
    if options is not None:
        import dataclasses

        if not dataclasses.is_dataclass(options):
            raise FtpluginsError(f"plugin {plugin.name!r}{where}: `options` must be a dataclass type.")
        for f in dataclasses.fields(options):
            if not f.name.startswith(plugin.name + "_"):
                raise FtpluginsError(
                    f"plugin {plugin.name!r}{where}: option {f.name!r} must be prefixed with "
                    f"'{plugin.name}_' so it can sit beside TRL's arguments."
                )
    for mode in (*getattr(plugin, "distributed", ()), *(getattr(plugin, "distributed_refusals", None) or {})):
        if mode not in DISTRIBUTED_MODES:
            raise FtpluginsError(f"plugin {plugin.name!r}{where}: unknown distributed mode {mode!r}.")


def select(names_or_plugins: list[Any]) -> list[Any]:
    """Resolve the user's selection, in the user's order; plugin objects pass through."""
    plugins, seen = [], set()
    for item in names_or_plugins:
        if isinstance(item, str):
            for name in (n.strip() for n in item.split(",")):
                if name:
                    plugins.append(load(name))
        else:
            check_plugin(item)
            plugins.append(item)
    for plugin in plugins:
        if plugin.name in seen:
            raise FtpluginsError(f"--plugins: {plugin.name} is selected twice; list each plugin once.")
        seen.add(plugin.name)
        missing = plugin.missing() if hasattr(plugin, "missing") else []
        if missing:
            from .errors import MissingExtraError

            raise MissingExtraError(
                f"plugin {plugin.name} needs packages that are not installed; run: {'; '.join(missing)}"
            )
    return plugins
