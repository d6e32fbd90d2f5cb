"""The trainer's own optimizer, with the parameter groups a method needs.

Methods that change how some parameters train (another rate, their own step) still owe the user the optimizer they
asked for: ``args.optim`` and its settings, and weight decay on exactly the parameters the trainer would decay. This
builds that optimizer from per-parameter group settings, once, for every such method (``create_optimizer`` hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def grouped_optimizer(model: nn.Module, args: Any, settings_of: Callable[[str, nn.Parameter], dict[str, Any]], *,
                      mixin: type | None = None, **extra: Any) -> torch.optim.Optimizer:
    """``args.optim``'s class and settings over ``model``'s trainable parameters, grouped by ``settings_of(name,
    param)`` (group keys such as ``lr``, or a method's own flag) and by whether the trainer decays the parameter
    (``weight_decay`` = ``args.weight_decay`` or 0, unless the settings give one). ``mixin``: a class placed before
    the optimizer class (a method's own step), constructed with ``extra`` keyword arguments."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        settings = {"weight_decay": args.weight_decay if name in decay else 0.0, **settings_of(name, param)}
        key = tuple(sorted(settings.items()))
        groups.setdefault(key, {**settings, "params": []})["params"].append(param)
    if mixin is not None:
        optimizer_cls = type(f"{mixin.__name__}{optimizer_cls.__name__}", (mixin, optimizer_cls), {})
    return optimizer_cls(list(groups.values()), **kwargs, **extra)
