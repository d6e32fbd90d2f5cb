"""The selection methods by name, for ``ftplugins select`` and ``ftplugins.data.select``.

Plugin names (``select_kmeans``) and short names (``kmeans``) both work; a plugin object (anything with
``name``, ``options`` and ``choose``) passes through, so a third-party method needs no entry here.
"""

from __future__ import annotations

import importlib
from typing import Any

from ftplugins.errors import FtpluginsError, did_you_mean

BUILTIN = {
    "select_kmeans": "ftplugins.methods.select_kmeans",
    "select_ot": "ftplugins.methods.select_ot",
    "select_influence": "ftplugins.methods.select_influence",
}
SHORT = {name.removeprefix("select_"): name for name in BUILTIN}


def resolve(method: Any) -> Any:
    """The plugin object of ``method`` (a name or the object itself)."""
    if not isinstance(method, str):
        return method
    name = SHORT.get(method, method)
    if name not in BUILTIN:
        names = [*SHORT, *BUILTIN]
        raise FtpluginsError(
            f"selection method {method!r} does not exist;{did_you_mean(method, names)} "
            f"choose one of {', '.join(SHORT)} (or their plugin names {', '.join(BUILTIN)})."
        )
    return importlib.import_module(BUILTIN[name]).plugin
