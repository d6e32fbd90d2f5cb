"""Which plugins a command line or YAML config selects, and the parser that reads their options.

``plugins`` is an argument like any TRL argument (``--plugins a,b`` or ``plugins: [a, b]`` in a
YAML config), but it must be known *before* the parser is built, because the selected plugins'
option dataclasses join the parser. :func:`selected_names` reads it early; the
:class:`PluginSelection` dataclass lets the parser accept (and ignore) it afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config_file import config_plugin_names, load_config
from .errors import FtpluginsError, OptionError
from .options import cli_error, convert, unknown_option_error


@dataclass
class PluginSelection:
    plugins: list[str] | None = field(
        default=None, metadata={"help": "Plugins to switch on, in call order: --plugins a,b (see `ftplugins list`)."}
    )


def selected_names(argv: Sequence[str]) -> list[str]:
    """Plugin names from ``--plugins a,b`` / ``--plugins a b`` / ``--plugins=a,b`` and ``--config``'s ``plugins``."""
    names: list[str] = []
    argv = list(argv)
    for i, token in enumerate(argv):
        if token.startswith("--plugins="):
            names += token.split("=", 1)[1].split(",")
        elif token == "--plugins":
            for value in argv[i + 1 :]:
                if value.startswith("--"):
                    break
                names += value.split(",")
    if not names and "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise FtpluginsError("--config needs a file path.")
        names += config_plugin_names(argv[index + 1])
    return [n.strip() for n in names if n.strip()]


def parse(
    dataclass_types: Sequence[type], plugins: list[Any], argv: Sequence[str], config_shared: bool = False,
    command: str = "python -m ftplugins.train",
) -> tuple[list[Any], dict]:
    """Parse ``argv`` (with ``--config``) into ``dataclass_types`` + the plugins' options.

    Returns the instances of ``dataclass_types`` and ``{plugin name: options instance}``. Every mistake is one
    line (an :class:`OptionError`) instead of argparse's usage text: a value of the wrong type names the flag or
    the YAML file and key, and the type expected; an unknown key or flag is suggested from every option (TRL's and
    the plugins'). YAML keys unknown to the parser are left alone when ``config_shared`` (the wrapper's config
    file also feeds the script). ``command`` is the program name shown by ``--help``.
    """
    from trl import TrlParser

    option_types = [p.options for p in plugins if p.options is not None]
    parser = TrlParser([*dataclass_types, PluginSelection, *option_types], prog=command)
    parser.error = _one_line_error  # argparse would print the whole usage, then the message
    argv = list(argv)
    known = option_names(parser)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise FtpluginsError("--config needs a file path.")
        path = argv[index + 1]
        del argv[index : index + 2]
        apply_config(parser, path, plugins, skip_unknown=config_shared, command=command)
    try:
        *parsed, from_args = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    unknown = [s.split("=", 1)[0] for s in from_args if s.startswith("--")]
    if unknown:
        raise unknown_option_error(unknown, plugins, known=known, source="cli", command=command)
    if from_args:
        raise OptionError(f"unexpected arguments {from_args}; options are --name value pairs.")
    n = len(dataclass_types)
    base, options_list = parsed[:n], parsed[n + 1 :]
    options: dict[str, Any] = {p.name: None for p in plugins}
    it = iter(options_list)
    for plugin in plugins:
        if plugin.options is not None:
            options[plugin.name] = next(it)
    return base, options


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    return list(_actions_by_key(parser))


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The action that reads each option (``--x``, not its ``--no_x`` complement), by its YAML key."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and not isinstance(action, argparse._StoreFalseAction):
            actions.setdefault(action.dest, action)
    return actions


def apply_config(parser: argparse.ArgumentParser, path: str, plugins: list[Any], skip_unknown: bool = False,
                 command: str = "") -> None:
    """Make the YAML file's values the parser's defaults (as TRL's ``--config`` does), each read through its
    option's command-line type first (:func:`ftplugins.options.convert`): YAML and the command line accept the
    same values. ``env:`` sets environment variables, as TRL does."""
    config = load_config(path)
    env = config.pop("env", {})
    if not isinstance(env, dict):
        raise OptionError(f"{path}: env is {type(env).__name__}; it is a mapping of variable names to values.")
    if "plugins" in config:
        config_plugin_names(path)  # a nested `plugins: {name: {...}}` is refused, not ignored
    actions = _actions_by_key(parser)
    unknown = [key for key in config if key not in actions]
    if unknown and not skip_unknown:
        raise unknown_option_error([str(k) for k in unknown], plugins, known=list(actions), source=path,
                                   command=command)
    for key, value in config.items():
        if key in actions:
            action = actions[key]
            action.default = convert(action, value, f"{path}: {key}")
            action.required = False
    for key, value in env.items():
        os.environ[str(key)] = str(value)


def _one_line_error(message: str) -> None:
    raise OptionError(cli_error(message))


def given_keys(argv: Sequence[str]) -> set[str]:
    """The option names the user set, on the command line or in the ``--config`` file (defaults excluded)."""
    argv = list(argv)
    keys = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        keys |= {str(k) for k in load_config(argv[argv.index("--config") + 1])}
    return keys - {"config"}


def option_values(options: Any) -> dict:
    return dataclasses.asdict(options) if options is not None else {}
