"""The optional packages of the data-selection family, imported only when a selection runs.

``ftplugins list`` never imports them: plugins declare them in ``Plugin.requires`` (checked with
``find_spec``) and the engine imports them here, turning a missing one into one line naming the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ftplugins.errors import MissingExtraError

INSTALL = 'pip install "ftplugins[data]"'

#: import name -> (distribution, what needs it)
PACKAGES = {"faiss": ("faiss-cpu", "k-means clustering"), "ot": ("pot", "the optimal-transport reference")}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install "ftplugins[data]"``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        dist, purpose = PACKAGES.get(module, (module, "data selection"))
        raise MissingExtraError(
            f"{purpose} needs the package {dist} (import {module}), which is not installed; run: {INSTALL}"
        ) from None


def requires() -> dict[str, str]:
    """``Plugin.requires`` of every selection plugin."""
    return {"faiss": INSTALL}
