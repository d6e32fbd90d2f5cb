"""Artifacts built once and reused: ``<root>/<kind>-<hash of the recipe>``.

A cached folder's name is a hash of everything that determines its contents (the recipe), so a
changed recipe builds anew and an unchanged one is never built twice. The build happens in a
staging folder renamed into place, so an interrupted build leaves nothing that looks cached, and
two processes building the same recipe at once both end with one complete folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any


def cache_root() -> str:
    """``$FTPLUGINS_CACHE``, else ``$XDG_CACHE_HOME/ftplugins`` (``~/.cache/ftplugins``)."""
    explicit = os.environ.get("FTPLUGINS_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ftplugins")


def recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _paths(root: str, kind: str, key: str) -> tuple[str, str]:
    """The folder of a cached build and its record file (whose presence marks the folder complete)."""
    folder = os.path.join(root, f"{kind}-{key}")
    return folder, os.path.join(folder, f"{kind}.json")


def is_cached(root: str, kind: str, recipe: dict[str, Any]) -> bool:
    """Whether :func:`cached_build` would find this recipe's build complete (and so not build it)."""
    return os.path.isfile(_paths(root, kind, recipe_key(recipe))[1])


def cached_build(root: str, kind: str, recipe: dict[str, Any], build: Callable[[str], dict[str, Any]]
                 ) -> tuple[str, dict[str, Any]]:
    """The folder ``<root>/<kind>-<key>`` and its record, building it with ``build(staging_folder)`` if absent.

    ``build`` fills the folder and returns a record (JSON-able), written beside the contents as
    ``<kind>.json`` with the recipe and key; that file's presence is what marks the folder complete."""
    key = recipe_key(recipe)
    folder, record_path = _paths(root, kind, key)
    if os.path.isfile(record_path):
        with open(record_path) as handle:
            return folder, json.load(handle)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".building-{kind}-", dir=root)
    try:
        # As JSON stores it, so that a fresh build and a cached one return equal records.
        record = json.loads(json.dumps({"recipe": recipe, "key": key, **build(staging)}, default=str))
        with open(os.path.join(staging, f"{kind}.json"), "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished the same build first: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, record
