"""Which weights a sparse method trains: the float weights of a model minus its embeddings and head.

LIFT, SaRA and grafting all scan a model the same way; only the candidates differ (the weights of
some layer types, or every parameter) and whether they must be matrices.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def embedding_weight_ids(model: nn.Module) -> set[int]:
    """``id`` of the input embeddings' and the output head's weights (one id when they are tied)."""
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


def _candidates(model: nn.Module, layer_types: tuple[type[nn.Module], ...] | None) -> Iterator[tuple[str, object]]:
    if layer_types is None:
        yield from model.named_parameters()
        return
    for module_name, module in model.named_modules():
        if isinstance(module, layer_types):
            yield (f"{module_name}.weight" if module_name else "weight"), getattr(module, "weight", None)


def target_weights(model: nn.Module, layer_types: tuple[type[nn.Module], ...] | None = None,
                   ndim: int | None = None) -> list[str]:
    """Names of the float weights to train, in model order, each shared tensor once, never the input
    embeddings or the output head (nor anything tied to them).

    ``layer_types``: only the ``weight`` of modules of these types (``None``: every parameter);
    ``ndim``: only tensors of that many dimensions (2 for matrices).
    """
    excluded = embedding_weight_ids(model)
    names, seen = [], set()
    for name, weight in _candidates(model, layer_types):
        if weight is None or id(weight) in excluded or id(weight) in seen or not weight.is_floating_point():
            continue
        if ndim is not None and weight.dim() != ndim:
            continue
        seen.add(id(weight))
        names.append(name)
    return names
