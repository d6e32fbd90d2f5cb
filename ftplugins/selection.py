"""Which plugins a command line or YAML config selects, and the parser that reads their options.

``plugins`` is an argument like any TRL argument (``--plugins a,b`` or ``plugins: [a, b]`` in a
YAML config), but it must be known *before* the parser is built, because the selected plugins'
option dataclasses join the parser. :func:`selected_names` reads it early; the
:class:`PluginSelection` dataclass lets the parser accept (and ignore) it afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FtpluginsError, OptionError
from .options import unknown_option_error


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
        names += config_plugins(argv[index + 1])
    return [n.strip() for n in names if n.strip()]


def config_plugins(path: str) -> list[str]:
    import yaml

    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise FtpluginsError(f"--config {path}: no such file.") from None
    value = config.get("plugins") or []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v) for v in value]


def parse(
    dataclass_types: Sequence[type], plugins: list[Any], argv: Sequence[str], config_shared: bool = False
) -> tuple[list[Any], dict]:
    """Parse ``argv`` (with ``--config``) into ``dataclass_types`` + the plugins' options.

    Returns the instances of ``dataclass_types`` and ``{plugin name: options instance}``.
    Unknown keys (on the command line or in the YAML) fail with the list of valid plugin options,
    except YAML keys when ``config_shared`` (the wrapper's config file also feeds the script).
    """
    from trl import TrlParser

    option_types = [p.options for p in plugins if p.options is not None]
    parser = TrlParser([*dataclass_types, PluginSelection, *option_types])
    try:
        *parsed, from_config, from_args = parser.parse_args_and_config(
            list(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if config_shared:
        from_config = []
    unknown = [s for s in [*from_config, *from_args] if s.startswith("--")]
    if unknown:
        raise unknown_option_error([u.split("=", 1)[0] for u in unknown], plugins)
    if from_config or from_args:
        raise OptionError(f"unexpected arguments {[*from_config, *from_args]}; options are --name value pairs.")
    n = len(dataclass_types)
    base, options_list = parsed[:n], parsed[n + 1 :]
    options: dict[str, Any] = {p.name: None for p in plugins}
    it = iter(options_list)
    for plugin in plugins:
        if plugin.options is not None:
            options[plugin.name] = next(it)
    return base, options


def option_values(options: Any) -> dict:
    return dataclasses.asdict(options) if options is not None else {}
