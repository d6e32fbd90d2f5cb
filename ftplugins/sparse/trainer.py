"""The Trainer-side glue of the sparse engine, as hook implementations for every sparse plugin.

Used by a plugin whose optimizer is a :class:`~ftplugins.sparse.optimizer.SparseAdamW`
(:class:`~ftplugins.sparse.plugin.SparseMethodPlugin`, lt_sft). It changes three things:

* **Gradient norm** (``grad_norm`` hook). The Trainer clips and logs the norm of the dense ``.grad``
  tensors, which the engine never leaves behind (its hooks move them into compact buffers), so it
  would log 0. :func:`grad_norm` reports the optimizer's norm of the compact gradients instead,
  averaged over processes and before clipping, exactly where the Trainer would clip. The clipping
  itself happens inside ``SparseAdamW.step`` (``max_grad_norm`` = ``args.max_grad_norm``), so an
  optimizer used without these hooks still clips.
* **Linear weight gradients** go straight into the optimizer's compact buffers through a reused
  workspace (:mod:`ftplugins.sparse.linear_grad`), instead of a fresh dense ``.grad`` per weight
  (:func:`around_optimizer`, in ``create_optimizer``).
* **No DDP wrapper** (``skip_ddp_wrapper`` hook). DDP's reducer would allocate dense gradient buckets
  for every trained weight (a second copy of the model) and would never see a gradient (the hooks
  consume them), so the engine averages compact gradients itself (one ``all_reduce`` of k values per
  step). What DDP would also have done, broadcasting rank 0's parameters and buffers so every
  process starts equal, :func:`around_optimizer` does before the optimizer is created.
"""

from __future__ import annotations

import logging
from typing import Any


def sparse_optimizer_of(optimizer: Any) -> Any:
    """The :class:`SparseAdamW` inside ``optimizer`` (Accelerate wraps it), or ``None``."""
    from .optimizer import SparseAdamW

    seen = 0
    while optimizer is not None and not isinstance(optimizer, SparseAdamW) and seen < 4:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, SparseAdamW) else None


def around_optimizer(model: Any, build: Any) -> Any:
    """``build()`` the sparse optimizer of ``model`` the way every sparse plugin's ``create_optimizer`` does:
    every process starts from rank 0's weights (what DDP would have broadcast) before the selection and the
    optimizer's copies are made from them, and linear weight gradients are routed into its compact buffers."""
    from .linear_grad import route_linear_gradients

    broadcast_from_rank0(model)
    optimizer = build()
    route_linear_gradients(model, optimizer)
    if getattr(optimizer, "step_in_backward", False) and optimizer._world_size() > 1:  # FSDP2 (DDP is refused)
        from .shards import adopt_before_forward

        adopt_before_forward(model, optimizer)
    return optimizer


def skip_ddp_wrapper(trainer: Any) -> bool:
    """The engine reduces compact gradients itself: no DDP wrapper around a model it trains."""
    return sparse_optimizer_of(getattr(trainer, "optimizer", None)) is not None


def grad_norm(trainer: Any) -> Any:
    """The compact gradients' norm, in place of the Trainer's (the optimizer clips by it in ``step()``)."""
    optimizer = sparse_optimizer_of(getattr(trainer, "optimizer", None))
    return None if optimizer is None else optimizer.grad_norm()


def broadcast_from_rank0(model: Any) -> None:
    """Make every process start from rank 0's parameters and buffers (what DDP does when it wraps)."""
    import torch

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    with torch.no_grad():
        seen = set()
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                dist.broadcast(tensor.data, src=0)


def save_trainer_delta(trainer: Any, method: str, metadata: dict[str, str]) -> str | None:
    """Write ``output_dir/sparse_delta.safetensors`` from the trainer's sparse optimizer (main process
    only), tagged with ``method`` and ``metadata``; returns its path. Shared by every sparse method."""
    from ftplugins.errors import FtpluginsError

    from .delta import DELTA_FILE, save_optimizer_delta

    optimizer = sparse_optimizer_of(trainer.optimizer)
    if optimizer is None:
        raise FtpluginsError(
            f"{method}_save_delta=True, but the trainer has no {method} optimizer after training (another optimizer "
            f"was passed with optimizers=?); drop it or set {method}_save_delta=False"
        )
    if optimizer.sharded():  # FSDP2: every process sends its rows
        from .shards import gathered_optimizer

        optimizer = gathered_optimizer(optimizer)
    if not trainer.args.should_save or optimizer is None:
        return None
    config = getattr(trainer.accelerator.unwrap_model(trainer.model), "config", None)
    return save_optimizer_delta(optimizer, f"{trainer.args.output_dir}/{DELTA_FILE}",
                                {"method": method, **metadata, "global_step": str(trainer.state.global_step)},
                                config=config)



def prepare_sparse_targets(model: Any, method: str, names: list[str], looks_for: str) -> list[str]:
    """Freeze everything but ``names`` (the method's target weights) after checking the model suits a sparse
    method: no PEFT adapter on it (the engine trains the base's own weights) and at least one target.
    ``looks_for`` says, for the error, which modules the method trains."""
    from ftplugins.errors import FtpluginsError, UnsupportedModelError

    if getattr(model, "peft_config", None):
        raise FtpluginsError(
            f"{method} trains the base model's own weights, and this model carries a PEFT adapter (a peft_config "
            f"from --use_peft or another plugin); drop the adapter or the {method} plugin."
        )
    if not names:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(
            f"{method} found no weight to train in model type {model_type!r}: it looks for {looks_for} other than "
            "the input/output embeddings (quantized layers do not count)."
        )
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    return names

def trainer_sparse_adamw(method: str, model: Any, args: Any, targets: list[str], selection: Any,
                         **engine: Any) -> Any:
    """A :class:`~ftplugins.sparse.optimizer.SparseAdamW` over ``targets`` (names a sparse method prepared)
    with the Trainer's hyperparameters (lr, betas, eps, weight decay, clipping); ``engine`` goes to it as is.

    Any other parameter that still requires grad (another plugin unfroze it) trains dense in the same
    optimizer, with a warning, rather than silently not at all. Shared by every selection-rule method.
    """
    from ftplugins.errors import FtpluginsError

    from .optimizer import SparseAdamW

    params = dict(model.named_parameters())
    missing = [n for n in targets if n not in params]
    if missing:
        raise FtpluginsError(f"{method}: the model no longer has the weights it prepared, e.g. {missing[:2]}; "
                             f"a plugin after {method} replaced them")
    wanted = set(targets)
    others = [(n, p) for n, p in params.items() if p.requires_grad and n not in wanted]
    if others:
        logging.getLogger(f"ftplugins.{method}").warning(
            "%s: %d other trainable parameter(s) train dense, e.g. %s", method, len(others), others[0][0])
    max_grad_norm = getattr(args, "max_grad_norm", None)
    return SparseAdamW(
        [(n, params[n]) for n in targets] + others,
        selection,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        max_grad_norm=max_grad_norm if max_grad_norm and max_grad_norm > 0 else None,
        **engine,
    )
