"""Plugin options: one dataclass per plugin, fields prefixed with the plugin's name.

The same dataclasses serve the Python API (``compose(..., masked_thought_ratio=0.2)``), YAML
config files and the command line (they sit in one ``TrlParser`` beside TRL's dataclasses).
Values are checked by each dataclass's ``__post_init__``; a ``ValueError`` there becomes an
:class:`OptionError` that names the option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import OptionError, did_you_mean


def valid_keys(plugins: list[Any]) -> list[str]:
    return [f.name for p in plugins if p.options for f in dataclasses.fields(p.options)]


def unknown_option_error(keys: list[str], plugins: list[Any]) -> OptionError:
    valid = valid_keys(plugins)
    hints = "".join(did_you_mean(k, valid) for k in keys[:1])
    names = ", ".join(p.name for p in plugins) or "(none selected)"
    return OptionError(
        f"unknown option(s) {', '.join(keys)};{hints} valid plugin options for {names}: "
        f"{', '.join(valid) or '(none)'}. `ftplugins info NAME` lists each plugin's options."
    )


def build_options(plugins: list[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Split ``values`` by plugin and build each plugin's options dataclass."""
    owner = {f.name: p for p in plugins if p.options for f in dataclasses.fields(p.options)}
    unknown = [k for k in values if k not in owner]
    if unknown:
        raise unknown_option_error(unknown, plugins)
    built = {}
    for plugin in plugins:
        if plugin.options is None:
            built[plugin.name] = None
            continue
        mine = {k: v for k, v in values.items() if owner[k] is plugin}
        built[plugin.name] = instantiate(plugin, mine)
    return built


def instantiate(plugin: Any, values: Mapping[str, Any]) -> Any:
    try:
        return plugin.options(**values)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"plugin {plugin.name}: {exc}") from None


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Shared helper for ``__post_init__``: a value must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"--{name} {value!r}: expected one of {', '.join(map(str, choices))}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Shared helper for ``__post_init__``: ``low <= value <= high``."""
    if not (low <= value <= high):
        raise ValueError(f"--{name} {value!r}: expected a value in [{low}, {high}]")
