"""Plugin options: one dataclass per plugin, fields prefixed with the plugin's name.

The same dataclasses serve the Python API (``compose(..., masked_thought_ratio=0.2)``), YAML
config files and the command line (they sit in one ``TrlParser`` beside TRL's dataclasses).
A YAML value goes through the very type function the command line uses (:func:`convert`), so
``lift_rank: 2.5`` fails as ``--lift_rank 2.5`` does. Values are then checked by each dataclass's
``__post_init__``; a ``ValueError`` there becomes an :class:`OptionError` that names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import OptionError

#: How each type function of the parser (transformers' HfArgumentParser) reads, for messages.
TYPE_WORDS = {"int": "an integer", "float": "a number", "string_to_bool": "true or false", "str": "a string"}


def valid_keys(plugins: list[Any]) -> list[str]:
    return [f.name for p in plugins if p.options for f in dataclasses.fields(p.options)]


def unknown_option_error(keys: list[str], plugins: list[Any], known: Sequence[str] = (), source: str | None = None,
                         command: str = "") -> OptionError:
    """``keys`` are not options. ``known`` are every option the parser takes (TRL's too), for the suggestion.
    ``source`` says how the user wrote them: ``None`` Python keywords, ``"cli"`` command-line flags, else the YAML
    file they are keys of (shown as written there). ``command`` is the one whose ``--help`` lists TRL's options."""
    valid = valid_keys(plugins)
    flag = "--" if source == "cli" else ""
    keys = [k.lstrip("-") for k in keys]
    close = difflib.get_close_matches(keys[0], list(known) or valid, n=1, cutoff=0.6)
    hint = f" did you mean {flag}{close[0]}?" if close else ""
    names = ", ".join(p.name for p in plugins) or "(none selected)"
    shown = ", ".join(f"{flag}{k}" for k in keys)
    where = f"unknown option(s) {shown}" if source in (None, "cli") else f"{source}: unknown key(s) {shown}"
    trl = f" TRL's options: `{command} --help`;" if command else ""
    mine = (f" valid plugin options for {names}: {', '.join(valid) or '(none)'}. `ftplugins info NAME` lists each "
            "plugin's options.") if plugins else " no plugin is selected (`ftplugins list` shows them)."
    return OptionError(f"{where};{hint}{trl}{mine}")


def expected(action: argparse.Action) -> str:
    """What a value of ``action`` must be, in words (``an integer``, ``one of a, b``)."""
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    word = TYPE_WORDS.get(getattr(action.type, "__name__", ""), f"a {getattr(action.type, '__name__', 'value')}")
    return f"a list of {word.split(' ', 1)[-1]}s" if action.nargs in ("+", "*") else word


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from a YAML file through ``action``'s command-line type: a scalar is read as its text would be on
    the command line, a list-valued option takes a list (a single value becomes a list of one), as ``nargs`` does.
    Mappings (TRL's dict options) and nulls are left as they are."""
    kind = getattr(action.type, "__name__", "")
    if value is None or isinstance(value, dict) or action.type is None or kind == "dict":
        return value
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many:
        if kind == "str" and not action.choices:
            return value  # a union TRL accepts as a list (report_to: [none]); its own code checks it
        raise OptionError(f"{where}: {value!r} is a list; expected {expected(action)}.")
    items = value if isinstance(value, list) else [value]
    out = [_one(action, item, where) for item in items]
    return out if many else out[0]


def _one(action: argparse.Action, item: Any, where: str) -> Any:
    if isinstance(item, (list, dict)):
        raise OptionError(f"{where}: {item!r} is not a single value; expected {expected(action)}.")
    text = ("true" if item else "false") if isinstance(item, bool) else str(item)
    try:
        result = action.type(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise OptionError(f"{where}: {_show(item)} is not {expected(action)}.{_yaml_bool_hint(action, item)}") from None
    if action.choices and result not in action.choices:
        raise OptionError(f"{where}: {_show(item)} is not {expected(action)}.{_yaml_bool_hint(action, item)}")
    return result


def _show(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"  # as the YAML file spells it
    return repr(item) if isinstance(item, str) else str(item)


def _yaml_bool_hint(action: argparse.Action, item: Any) -> str:
    if isinstance(item, bool) and action.choices and any(str(c) in ("no", "yes", "off", "on") for c in action.choices):
        return " YAML reads an unquoted no/yes/off/on as a boolean: quote it (\"no\")."
    return ""


def cli_error(message: str) -> str:
    """argparse's message for a bad command-line value, as one line that names the flag, the value and the type."""
    import re

    match = re.match(r"argument ([^:/]+)(?:/\S+)?: invalid (\w+) value: '(.*)'$", message)
    if match:
        flag, kind, value = match.groups()
        return f"{flag} {value!r} (on the command line): expected {TYPE_WORDS.get(kind, kind)}."
    match = re.match(r"argument ([^:/]+)(?:/\S+)?: invalid choice: '(.*)' \(choose from (.*)\)$", message)
    if match:
        flag, value, choices = match.groups()
        return f"{flag} {value!r} (on the command line): expected one of {choices.replace(chr(39), '')}."
    return message.replace("argument ", "", 1) if message.startswith("argument ") else message


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
