"""The identity of the base a sparse delta was made from, so it is never applied to another one.

A delta records, in its header, ``base_config_sha256`` (the model config, minus keys that training
changes without changing the weights) and ``base_tensors_sha256``: per tensor it changes, the sha256 of
that whole tensor's base values. Values are hashed as float64, so a bf16 base on disk and the same base
upcast to fp32 for training have the same checksum.

* Apply: each touched tensor must hash to its record. If it does not, but subtracting the delta gives a
  tensor that does, the delta was applied already (the in-place double apply); otherwise it is another base.
* Revert: the tensors after subtracting must hash to the record (the model was base + this delta).
* Compose: records merge per tensor; deltas made from different bases (LT-SFT's task delta is trained on
  base + a language delta) leave the tensors they disagree on unchecked, with a warning.

Deltas without a record (written before it existed) still apply, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

CONFIG_KEY, TENSORS_KEY = "base_config_sha256", "base_tensors_sha256"
#: Config keys a run changes without changing what the weights mean (TRL turns ``use_cache`` off, ...).
_VOLATILE = {"use_cache", "dtype", "torch_dtype", "transformers_version", "architectures", "output_attentions",
             "output_hidden_states", "return_dict"}
#: Elements hashed at a time: 512 KiB of float64 (the hash is of the whole stream, so the digest does not depend on
#: it). Checksums are taken at the end of a run, inside its peak memory: 4M-element chunks cost ~96 MB of copies.
_CHUNK = 1 << 16
_log = logging.getLogger("ftplugins.sparse")


class WrongBaseError(FtpluginsError):
    """The delta's record says it was made from another model."""


def config_sha256(config: Any) -> str | None:
    """sha256 of a model config (a ``PretrainedConfig`` or its ``to_dict()``), volatile keys left out."""
    if config is None:
        return None
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in values.items() if k not in _VOLATILE and not k.startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


@torch.no_grad()
def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of ``tensor``'s shape and values as little-endian float64 (signed zeros alike), a chunk at a time."""
    digest = hashlib.sha256(json.dumps(list(tensor.shape)).encode())
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK].to(device="cpu", dtype=torch.float64, copy=True)
        chunk.add_(0.0)  # -0.0 and 0.0 hash alike
        digest.update(chunk.numpy())  # the buffer itself, no bytes copy
    return digest.hexdigest()


def record(metadata: dict[str, str], tensors: Mapping[str, str], config: Any = None) -> dict[str, str]:
    """``metadata`` with the base record (``tensors``: name -> :func:`tensor_sha256` of its base values)."""
    out = dict(metadata)
    out[TENSORS_KEY] = json.dumps(dict(tensors), sort_keys=True)
    digest = config_sha256(config)
    if digest is not None:
        out[CONFIG_KEY] = digest
    return out


def tensors_of(metadata: Mapping[str, str]) -> dict[str, str] | None:
    text = metadata.get(TENSORS_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise FtpluginsError(f"the delta's {TENSORS_KEY} record is not valid JSON; the file was damaged") from None
    if not isinstance(value, dict):
        raise FtpluginsError(f"the delta's {TENSORS_KEY} record is not a name -> checksum mapping; "
                             "the file was damaged")
    return value


def merged(metadatas: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The record of a composed delta: per tensor, the checksum its parts agree on."""
    metadatas = list(metadatas)
    parts = [tensors_of(m) for m in metadatas]
    if any(p is None for p in parts):
        return {}
    configs = {m.get(CONFIG_KEY) for m in metadatas}
    tensors: dict[str, str] = {}
    disagree: set[str] = set()
    for part in parts:
        for name, digest in part.items():
            if tensors.setdefault(name, digest) != digest:
                disagree.add(name)
    if disagree:
        _log.warning("the deltas were made from different bases for %d tensor(s), e.g. %s (expected when stacking "
                     "LT-SFT language and task deltas); those tensors are applied unchecked",
                     len(disagree), sorted(disagree)[0])
    out = {TENSORS_KEY: json.dumps({n: d for n, d in tensors.items() if n not in disagree}, sort_keys=True)}
    if len(configs) == 1 and None not in configs:
        out[CONFIG_KEY] = configs.pop()
    elif len(configs - {None}) > 1:
        raise WrongBaseError("the deltas were made from models with different configs (base_config_sha256 differs); "
                             "compose deltas of one base model only")
    return out


def check_base(source: str, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor],
               apply_entry: Any, scale: float, config: Any = None) -> None:
    """Refuse applying (``scale > 0``) or reverting (``scale < 0``) onto a model the delta was not made for.

    ``tensors``: the target's tensors the delta touches; ``apply_entry(name, copy, scale)`` applies the delta's
    entry to a copy (to look at the result without changing the target); ``config``: the target's config.
    """
    recorded = tensors_of(metadata)
    if recorded is None:
        _log.warning("%s carries no record of its base model (written by an older ftplugins); applying it without "
                     "checking that this is the model it was made from", source)
        return
    wanted = metadata.get(CONFIG_KEY)
    have = config_sha256(config)
    if wanted is not None and have is not None and wanted != have:
        raise WrongBaseError(f"{source} was made from a model with another config (config hash {wanted[:12]}, this "
                             f"model's {have[:12]}); apply it to the base it was trained from, or pass --no-base-check")
    for name, tensor in tensors.items():
        expected = recorded.get(name)
        if expected is None:
            continue
        if scale > 0:
            if tensor_sha256(tensor) == expected:
                continue
            if tensor_sha256(apply_entry(name, tensor.clone(), -scale)) == expected:
                raise WrongBaseError(f"{source} was applied to this model already ({name} equals base + delta); "
                                     "applying it again would add it twice: use the model as it is, or revert first")
            raise WrongBaseError(f"{source} was made from another base model: {name} differs from the tensor it was "
                                 "trained from; apply it to that base (or pass --no-base-check to force it)")
        elif tensor_sha256(apply_entry(name, tensor.clone(), scale)) != expected:
            raise WrongBaseError(f"reverting {source} does not give back its base for {name}: this model is not base "
                                 "+ this delta (reverted already, or another model?); pass --no-base-check to force it")
