"""Ingredients of a soup or an analysis: saved models and adapters, read one tensor at a time.

An :class:`Ingredient` is a folder that ``save_pretrained`` wrote: a full model (``model.safetensors`` or
shards listed by ``model.safetensors.index.json``; a diffusers model's ``diffusion_pytorch_model.safetensors``, as a
``DiffusionTrainer`` checkpoint holds its denoiser) or a PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``, any PEFT or ftplugins adapter type). Tensors are read lazily with
safetensors' ``safe_open`` (memory-mapped), so a soup over N ingredients holds one tensor of each at a
time, never N models. :func:`check_compatible` refuses, by name and before anything is written, a set
of ingredients that cannot be averaged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from ftplugins.errors import FtpluginsError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MODEL_WEIGHTS, MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
#: (weights, shard index) of a saved full model: transformers' names, then diffusers' (UNet, SD3 transformer).
MODEL_LAYOUTS = ((MODEL_WEIGHTS, MODEL_INDEX),
                 ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"))
#: Adapter-config keys that may differ between adapters that still average meaningfully.
_CONFIG_KEYS_FREE = {"revision", "inference_mode", "base_model_name_or_path"}
#: Config keys of a full model that do not change what the weights mean.
_MODEL_KEYS_FREE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


class Ingredient:
    """One saved model or adapter folder: its kind, its config and where each tensor lives."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise FtpluginsError(f"ingredient {path!r} is not a folder; pass a folder written by save_pretrained "
                                 "(a model or a PEFT adapter)")
        self.kind = "adapter" if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) else "model"
        self.config = _read_json(os.path.join(path, ADAPTER_CONFIG if self.kind == "adapter" else "config.json"))
        self.files = self._weight_files()  # tensor name -> file (relative to path), in file order
        self._handles: dict[str, Any] = {}
        self._stack = ExitStack()

    def _weight_files(self) -> dict[str, str]:
        if self.kind == "adapter":
            return self._names_in(ADAPTER_WEIGHTS)
        for weights, index_name in MODEL_LAYOUTS:
            index = os.path.join(self.path, index_name)
            if os.path.isfile(index):
                weight_map = _read_json(index).get("weight_map") or {}
                if not weight_map:
                    raise FtpluginsError(f"{index} has no weight_map; re-save the model with save_pretrained")
                files = {}
                for shard in dict.fromkeys(weight_map.values()):
                    files.update(self._names_in(shard))
                return files
            if os.path.isfile(os.path.join(self.path, weights)):
                return self._names_in(weights)
        return self._names_in(MODEL_WEIGHTS)  # none of them: the error names what the folder holds

    def _names_in(self, filename: str) -> dict[str, str]:
        from safetensors import safe_open

        full = os.path.join(self.path, filename)
        if not os.path.isfile(full):
            found = sorted(n for n in os.listdir(self.path) if n.endswith((".bin", ".pt", ".safetensors")))
            raise FtpluginsError(f"ingredient {self.path!r} has no {filename} (it holds {found or 'no weights'}); "
                                 "save it with save_pretrained(safe_serialization=True)")
        with safe_open(full, framework="pt") as handle:
            return {name: filename for name in handle.keys()}

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(self.files.values()))

    def handle(self, filename: str) -> Any:
        from safetensors import safe_open

        if filename not in self._handles:
            self._handles[filename] = self._stack.enter_context(
                safe_open(os.path.join(self.path, filename), framework="pt"))
        return self._handles[filename]

    def get(self, name: str):
        """One tensor, read through a handle opened for this read alone. safetensors memory-maps the file, and
        every page a mapping has read stays in the process's resident set until it is unmapped: read through the
        long-lived handles of :meth:`handle`, a soup's RSS would grow to the whole size of every ingredient by its
        last tensor (measured in ``benchmarks/perf/soup.py``); this way it holds about one tensor per ingredient."""
        from safetensors import safe_open

        with safe_open(os.path.join(self.path, self.files[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(dtype string, shape) from the file header, without reading the tensor."""
        sliced = self.handle(self.files[name]).get_slice(name)
        return sliced.get_dtype(), tuple(sliced.get_shape())

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __repr__(self) -> str:
        return f"<{self.kind} {self.path}>"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def open_ingredients(paths: Sequence[str]) -> list[Ingredient]:
    """Open and check ``paths`` (at least one; see :func:`check_compatible`)."""
    if not paths:
        raise FtpluginsError("a soup needs at least one ingredient; pass model or adapter folders")
    ingredients = [Ingredient(p) for p in paths]
    check_compatible(ingredients)
    return ingredients


def check_compatible(ingredients: Sequence[Ingredient]) -> None:
    """Refuse ingredients that cannot be averaged: mixed kinds, other architectures or adapter configs,
    tensors missing or of another shape or dtype. The message names both ingredients and the first difference."""
    first = ingredients[0]
    for other in ingredients[1:]:
        where = f"ingredients {first.path!r} and {other.path!r}"
        if other.kind != first.kind:
            raise FtpluginsError(f"{where}: one is a {first.kind}, the other a {other.kind}; a soup averages "
                                 "ingredients of one kind (all full models, or all adapters of one config)")
        free = _CONFIG_KEYS_FREE if first.kind == "adapter" else _MODEL_KEYS_FREE
        difference = _config_difference(first.config, other.config, free)
        if difference:
            what = "adapter configs" if first.kind == "adapter" else "architectures (config.json)"
            raise FtpluginsError(f"{where} have different {what}: {difference}; averaging their weights would mix "
                                 "unrelated parameters. Soup only fine-tunes of one model with one config/rank.")
        if set(first.files) != set(other.files):
            only = sorted(set(first.files) ^ set(other.files))
            raise FtpluginsError(f"{where} hold different tensors (e.g. {only[:3]}); soup fine-tunes of one model")
        for name in first.files:
            mine, theirs = first.spec(name), other.spec(name)
            if mine[1] != theirs[1]:
                raise FtpluginsError(f"{where}: tensor {name} has shape {mine[1]} vs {theirs[1]}; "
                                     "soup fine-tunes of one architecture")
            if mine[0] != theirs[0]:
                raise FtpluginsError(f"{where}: tensor {name} has dtype {mine[0]} vs {theirs[0]}; save every "
                                     "ingredient in one dtype (e.g. load with torch_dtype=... and save_pretrained)")


def _config_difference(a: dict, b: dict, free: set[str]) -> str:
    for key in sorted((set(a) | set(b)) - free):
        if _comparable(a.get(key)) != _comparable(b.get(key)):
            return f"{key}={a.get(key)!r} vs {b.get(key)!r}"
    return ""


def _comparable(value: Any) -> Any:
    # PEFT keeps target_modules as a set and saves it as a list in the set's (hash-seeded) order.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


def iter_tensors(ingredient: Ingredient) -> Iterator[tuple[str, Any]]:
    for name in ingredient.files:
        yield name, ingredient.get(name)
