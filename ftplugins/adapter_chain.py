"""``chain: adapters`` in ``ftplugins pipeline``: a stage trains a new adapter on top of the earlier stages' adapters.

The choice: PEFT's own multi-adapter model. The earlier adapters are loaded, frozen and unmerged, into one
``PeftModel`` as ``chain-1``, ``chain-2``, ...; the stage's adapter is added as ``default``; all are active, applied
in that order (our tuners apply active adapters in turn, LoRA sums them). Only ``default`` trains and only it is
saved, so each stage folder is an ordinary adapter folder, and the final model is ``base`` + the adapters in order
(:func:`load_chain`). PEFT keeps one adapter type per model, so every stage of a chain uses the same type.

The pipeline sets the chain around a stage (:func:`chained`); the trainer's ``__init__``
(:mod:`ftplugins.composition`) asks :func:`stack` for the model to train.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import FtpluginsError

#: The adapter folders (oldest first) the stage being built starts from; empty outside a chained stage.
_chain: list[str] = []
NEW = "default"


def chain_names(count: int) -> list[str]:
    return [f"chain-{number}" for number in range(1, count + 1)]


@contextlib.contextmanager
def chained(adapters: Sequence[str]) -> Iterator[None]:
    """While the block runs, a trainer built from a path starts from the base + ``adapters`` (frozen)."""
    saved = list(_chain)
    _chain[:] = list(adapters)
    try:
        yield
    finally:
        _chain[:] = saved


def load_chain(model: Any, adapters: Sequence[str]) -> Any:
    """``model`` with the adapters saved in ``adapters`` loaded frozen and active in order: the pipeline's result."""
    from .peft_types import ensure_peft_type, load_adapter, read_peft_type

    names = chain_names(len(adapters))
    peft_model = load_adapter(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        ensure_peft_type(read_peft_type(path))
        try:
            peft_model.load_adapter(path, adapter_name=name)
        except ValueError as exc:
            raise FtpluginsError(f"adapter chain: {path} cannot join the chain ({exc}); every stage of "
                                 "chain: adapters trains the same adapter type (or use chain: merge).") from None
    peft_model.base_model.set_adapter(names, inference_mode=True)
    return peft_model


def stack(model: Any, peft_config: Any) -> Any | None:
    """The model a chained stage trains: ``model`` + the frozen chain + a new ``default`` adapter from
    ``peft_config``; None outside a chained stage."""
    if not _chain:
        return None
    if peft_config is None:
        raise FtpluginsError("chain: adapters: this stage trains all weights, after stages that trained adapters; "
                             "give it an adapter (use_peft or an adapter plugin) or use chain: merge, which merges "
                             "the adapters into the model first.")
    peft_model = load_chain(model, _chain)
    try:
        peft_model.add_adapter(NEW, peft_config)
    except ValueError as exc:
        raise FtpluginsError(f"chain: adapters: this stage's adapter cannot join the chain ({exc}); every stage "
                             "trains the same adapter type (or use chain: merge).") from None
    frozen = chain_names(len(_chain))
    tuner = peft_model.base_model
    tuner.set_adapter([*frozen, NEW])  # order of application: the chain, then the new adapter
    tuner.set_requires_grad(frozen, requires_grad=False)
    # transformers resumes a checkpoint into the *first* active adapter: name the new one first there, the layers
    # keep the order above.
    tuner.active_adapter = [NEW, *frozen]
    peft_model.save_pretrained = functools.partial(type(peft_model).save_pretrained, peft_model,
                                                   selected_adapters=[NEW])
    return peft_model
