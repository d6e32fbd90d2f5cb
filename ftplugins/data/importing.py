"""User callables given as ``pkg.mod:func`` (scorers), imported with one clear error when they cannot be."""

from __future__ import annotations

import importlib
from typing import Any

from ftplugins.errors import FtpluginsError


def import_callable(option: str, path: str) -> Any:
    """``pkg.mod:func`` or ``pkg.mod.func`` -> the callable; ``option`` names the setting in errors."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise FtpluginsError(f"{option}={path!r}: expected a dotted path 'pkg.module:function'.")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FtpluginsError(
            f"{option}={path!r}: cannot import module {module_name!r} ({exc}); install it or put it on PYTHONPATH."
        ) from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FtpluginsError(f"{option}={path!r}: module {module_name!r} has no attribute {attr!r}.")
    if not callable(target):
        raise FtpluginsError(f"{option}={path!r} is a {type(target).__name__}, not a callable.")
    return target
