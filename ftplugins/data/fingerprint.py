"""Cheap identities of encoders and models for cache keys."""

from __future__ import annotations

import hashlib
import os
from typing import Any


def folder_fingerprint(path: str) -> str:
    """Names, sizes and the first and last MiB of every file of a model folder (no model load)."""
    digest = hashlib.sha256()
    for root, _dirs, names in sorted(os.walk(path)):
        for name in sorted(names):
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            digest.update(f"{os.path.relpath(full, path)}:{size}".encode())
            with open(full, "rb") as handle:
                digest.update(handle.read(1 << 20))
                if size > 2 << 20:
                    handle.seek(-(1 << 20), os.SEEK_END)
                    digest.update(handle.read())
    return digest.hexdigest()[:24]


def model_fingerprint(model: Any) -> str:
    """The weights' fingerprint of a loaded model (per tensor its shape, sum and first values)."""
    from ftplugins.methods.s3ft.cache import weights_fingerprint

    return weights_fingerprint(model)[:24]
