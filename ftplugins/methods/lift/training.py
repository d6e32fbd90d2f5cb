"""The torch side of the LIFT plugin: which weights train, and the engine's optimizer for them."""

from __future__ import annotations

from typing import Any

from torch import nn

from ftplugins.sparse.optimizer import SparseAdamW
from ftplugins.sparse.selection import per_tensor
from ftplugins.sparse.targets import target_weights
from ftplugins.sparse.trainer import prepare_sparse_targets, trainer_sparse_adamw

from .selection import select_indices



def lift_targets(model: nn.Module) -> list[str]:
    """Names of the weights LIFT trains: every 2-D float weight of an ``nn.Linear``, except the
    output head (``lm_head``) and anything tied to the input or output embeddings."""
    return target_weights(model, (nn.Linear,), ndim=2)


def prepare(model: nn.Module) -> list[str]:
    return prepare_sparse_targets(model, "lift", lift_targets(model), "torch.nn.Linear modules with 2-D float weights")


def build_optimizer(model: nn.Module, args: Any, options: Any, targets: list[str]) -> SparseAdamW:
    """A :class:`SparseAdamW` over the LIFT targets with the Trainer's hyperparameters.

    Any other parameter that still requires grad (another plugin unfroze it after lift) trains dense,
    in the same optimizer, rather than silently not at all.
    """
    seed = int(getattr(args, "seed", 0) or 0)
    rule = per_tensor(
        lambda name, weight: select_indices(weight, rank=options.lift_rank, density=options.lift_density,
                                            budget_rank=options.lift_budget_rank, svd=options.lift_svd, seed=seed,
                                            selection=options.lift_selection, name=name),
        names=targets, named=True,
    )
    return trainer_sparse_adamw("lift", model, args, targets, rule, refresh_interval=options.lift_interval,
                                track_origin=options.lift_save_delta, step_in_backward=options.lift_step_in_backward)


def save_delta_of(trainer: Any, options: Any) -> str | None:
    """Write ``output_dir/sparse_delta.safetensors`` (main process only); returns its path."""
    from ftplugins.sparse.trainer import save_trainer_delta

    return save_trainer_delta(trainer, "lift", {
        "lift_rank": str(options.lift_rank),
        "lift_budget_rank": str(options.lift_budget_rank),
        "lift_density": str(options.lift_density),
        "lift_interval": str(options.lift_interval),
        "lift_selection": str(options.lift_selection),
    })
