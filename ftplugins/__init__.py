"""ftplugins: fine-tuning methods from recent research as plugins for the Hugging Face stack.

The public face. Names are resolved lazily so that ``import ftplugins`` (and ``ftplugins list``)
does not import torch, transformers or TRL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compose": "ftplugins.composition",
    "Run": "ftplugins.context",
    "Plugin": "ftplugins.plugin",
    "hookimpl": "ftplugins.plugin",
    "load_plugins": "ftplugins.registry",
    "load_adapter": "ftplugins.peft_types",
    "peft_config": "ftplugins.peft_types",
    "FtpluginsError": "ftplugins.errors",
}

__all__ = ["__version__", *_EXPORTS]


def _quiet_foreign_notices() -> None:
    from .quantized_cpu import quiet_bitsandbytes_notice

    quiet_bitsandbytes_notice()


_quiet_foreign_notices()


def _register_peft_types_when_peft_is_imported() -> None:
    """Adapters of every installed plugin's PEFT type load through PEFT's and transformers' own loaders once
    ``ftplugins`` is imported; nothing is imported here (``peft``, torch) until ``peft`` itself is."""
    from .peft_types import register_when_peft_imported

    register_when_peft_imported()


_register_peft_types_when_peft_is_imported()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ftplugins' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_EXPORTS[name])
    value = getattr(module, "select" if name == "load_plugins" else name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .composition import compose
    from .context import Run
    from .errors import FtpluginsError
    from .peft_types import load_adapter, peft_config
    from .plugin import Plugin, hookimpl
    from .registry import select as load_plugins

