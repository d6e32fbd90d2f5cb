"""Reading a ``--config`` YAML file: one line for every way the file itself can be wrong.

TRL reads the same file with ``yaml.safe_load`` and lets the exceptions through (``ParserError``,
``UnicodeDecodeError``, ``AttributeError`` for a top-level list); here each becomes an :class:`OptionError` that names
the file, where it is wrong, and what a config file must be (a mapping of option names to values).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import FtpluginsError, OptionError


def load_config(path: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (an empty file is an empty mapping)."""
    import yaml

    if os.path.isdir(path):
        raise FtpluginsError(f"--config {path}: is a folder; give a YAML file.")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise FtpluginsError(f"--config {path}: no such file.") from None
    except UnicodeDecodeError:
        raise OptionError(f"--config {path}: not a text file (it is not UTF-8); give a YAML file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptionError(f"--config {path}: not valid YAML{where}: {problem}.") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise OptionError(
            f"--config {path}: the file holds a YAML {type(config).__name__}, and a config is a mapping of option "
            "names to values (`max_steps: 100`, one per line)."
        )
    return config


def config_plugin_names(path: str) -> list[str]:
    """The ``plugins:`` of the config file: a list of names or one comma-separated string."""
    value = load_config(path).get("plugins") or []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, dict):
        options = ", ".join(f"{name}_{key}: {v!r}" for name, opts in value.items() if isinstance(opts, dict)
                            for key, v in opts.items())
        raise OptionError(
            f"{path}: plugins is a mapping; it is a list of plugin names (plugins: [{', '.join(map(str, value))}]), "
            f"and plugin options are top-level keys prefixed with the plugin's name"
            f"{' (' + options + ')' if options else ''}."
        )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"{path}: plugins: {value!r} is not a list of plugin names "
                          "(plugins: [lift, masked_thought]).")
    return value
