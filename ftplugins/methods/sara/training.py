"""The torch side of SaRA: targets, the engine's optimizer, the nuclear-norm term, the progressive stage."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError
from ftplugins.sparse.optimizer import SparseAdamW
from ftplugins.sparse.selection import per_tensor
from ftplugins.sparse.shards import gather_rows, is_sharded, local, own_rows
from ftplugins.sparse.targets import target_weights
from ftplugins.sparse.trainer import prepare_sparse_targets, sparse_optimizer_of, trainer_sparse_adamw

from . import select

logger = logging.getLogger("ftplugins.sara")

#: Layers whose weights SaRA trains: Linear (LLMs, attention / MLP of a UNet) and convolutions (UNet).
TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def sara_targets(model: nn.Module) -> list[str]:
    """Names of the weights SaRA trains: every float weight of a Linear / Conv layer, except the input
    and output embeddings (``lm_head`` and anything tied to them)."""
    return target_weights(model, TARGET_TYPES)


def prepare(model: nn.Module) -> list[str]:
    return prepare_sparse_targets(model, "sara", sara_targets(model),
                                  "torch.nn.Linear / Conv modules with float weights")


def nuclear_norm_grad(matrix: torch.Tensor) -> torch.Tensor:
    """A (sub)gradient of ``||matrix||_*``: ``U Vᵀ`` over the singular values above a rank tolerance
    (0 for the zero matrix, the minimum-norm subgradient there). fp32 full SVD."""
    work = matrix.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return torch.zeros_like(work)
    tol = float(s[0]) * max(work.shape) * torch.finfo(torch.float32).eps
    r = int((s > tol).sum())
    return u[:, :r] @ vh[:r]


class NuclearNormTerm:
    """Engine gradient term: λ·||(θ - θ0) ⊙ M||_* on one random eligible 2-D weight per step.

    The weight is drawn with a generator seeded by (seed, optimizer step), so every process and a
    resumed run draw the same one. Its gradient with respect to the trained values is
    λ·(U Vᵀ)[M], added to the compact gradient (so it also counts for clipping).
    """

    def __init__(self, names: list[str], lam: float, min_dim: int, seed: int) -> None:
        self.names, self.lam, self.min_dim, self.seed = list(names), float(lam), int(min_dim), int(seed)
        self.last: str | None = None  # the weight regularised at the last step (for logs and tests)

    def eligible(self, optimizer: SparseAdamW) -> list[tuple[str, nn.Parameter]]:
        wanted = set(self.names)
        return [(n, p) for n, p in optimizer.named_params()
                if n in wanted and p.dim() == 2 and min(p.shape) > self.min_dim]

    @torch.no_grad()
    def __call__(self, optimizer: SparseAdamW) -> None:
        candidates = self.eligible(optimizer)
        if not candidates or self.lam == 0:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + optimizer.steps)
        name, param = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        self.last = name
        state = optimizer.state[param]
        indices = state.get("indices")
        if indices is not None and indices.numel() == 0 and not is_sharded(param):
            return  # (under FSDP2 a process with no entry still takes part in the gather)
        shard = local(param)  # under FSDP2 this process's rows: the SVD needs the whole θ - θ0, gathered
        delta = torch.zeros(shard.numel(), dtype=torch.float32, device=shard.device)
        compact = optimizer.selected_delta(param)
        if indices is None:
            delta.copy_(compact)
        else:
            delta.index_put_((indices,), compact)
        grad = own_rows(param, nuclear_norm_grad(gather_rows(param, delta.view(shard.shape)).view(param.shape)))
        optimizer.add_to_grad(param, self.lam * (grad if indices is None else grad.index_select(0, indices)))


def build_optimizer(model: nn.Module, args: Any, options: Any, targets: list[str]) -> SparseAdamW:
    """A :class:`SparseAdamW` over the SaRA targets with the Trainer's hyperparameters (other parameters
    that still require grad, unfrozen by another plugin, train dense in the same optimizer)."""
    params = dict(model.named_parameters())
    threshold = options.sara_threshold
    rule = per_tensor(lambda weight: select(weight, threshold), names=targets)
    terms = []
    if options.sara_rank_lambda > 0:
        term = NuclearNormTerm(targets, options.sara_rank_lambda, options.sara_rank_min_dim,
                               int(getattr(args, "seed", 0) or 0))
        if not any(min(params[n].shape) > options.sara_rank_min_dim
                   for n in targets if n in params and params[n].dim() == 2):
            logger.warning("sara: no 2-D trained weight has min(dim) > sara_rank_min_dim=%d; the low-rank "
                           "regulariser is inactive", options.sara_rank_min_dim)
        terms.append(term)
    # track_origin: the nuclear norm acts on θ - θ0, and the delta is written from it
    optimizer = trainer_sparse_adamw("sara", model, args, targets, rule, track_origin=True, grad_terms=terms)
    optimizer.sara_targets = list(targets)  # what the progressive stage shrinks (not dense extras)
    if optimizer.selected_numel() == 0:
        logger.warning("sara: no entry has |θ0| < sara_threshold=%g; nothing trains", threshold)
    return optimizer


@torch.no_grad()
def progressive_selection(optimizer: SparseAdamW, threshold: float, targets: list[str]) -> dict[str, Any]:
    """M' = M ∧ {|θ_t| < τ} per target (explicitly a subset of the current selection); others unchanged.
    Indices into each process's own rows under FSDP2 (``refresh(local=True)``)."""
    wanted = set(targets)
    out: dict[str, Any] = {}
    for name, param in optimizer.named_params():
        state = optimizer.state[param]
        indices = state.get("indices")
        if name not in wanted:
            out[name] = indices
            continue
        flat = local(param).detach().reshape(-1)  # this process's rows under FSDP2
        current = state["master"] if "master" in state else (
            flat if indices is None else flat.index_select(0, indices))
        keep = current.abs() < threshold
        at = torch.arange(flat.numel(), device=flat.device) if indices is None else indices
        out[name] = at[keep]
    return out


def progressive_step(options: Any, max_steps: int) -> int:
    """T_p: the option, or half of the run's optimizer steps when it is 0; -1 (or T_p < 1): never."""
    step = options.sara_progressive_step
    if step == 0:
        step = int(max_steps) // 2
    return step if step >= 1 else 0


class ProgressiveCallback(TrainerCallback):
    """After optimizer step T_p: shrink the mask to M' ⊆ M and restart Adam.

    Stateless: the trigger is ``state.global_step == T_p``, and the shrunk mask lives in the
    optimizer's state (saved with checkpoints), so a run resumed after T_p keeps M'.
    """

    def __init__(self, options: Any) -> None:
        self.options = options
        self.applied_at: int | None = None

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        at = progressive_step(self.options, state.max_steps)
        if not at or state.global_step != at:
            return
        sparse = sparse_optimizer_of(optimizer)
        if sparse is None:
            raise FtpluginsError("sara: the trainer's optimizer is not the sara optimizer at the progressive step "
                                 "(another optimizer was passed with optimizers=?)")
        targets = getattr(sparse, "sara_targets", None)
        if targets is None:
            raise FtpluginsError("sara: the sparse optimizer was not built by the sara plugin")
        selection = progressive_selection(sparse, self.options.sara_threshold, targets)
        before = sparse.selected_numel()
        sparse.refresh(selection=selection, reset_state=True, local=True)
        self.applied_at = state.global_step
        logger.info("sara: progressive stage at step %d: %d -> %d trained entries", at, before,
                    sparse.selected_numel())


def save_delta_of(trainer: Any, options: Any) -> str | None:
    """Write ``output_dir/sparse_delta.safetensors`` (main process only); returns its path."""
    from ftplugins.sparse.trainer import save_trainer_delta

    return save_trainer_delta(trainer, "sara", {
        "sara_threshold": repr(options.sara_threshold),
        "sara_progressive_step": str(options.sara_progressive_step),
        "sara_rank_lambda": repr(options.sara_rank_lambda),
    })
