"""Model grafting (Panigrahi et al., ICML 2023, §3): learn a sparse binary mask γ over δ = θ_ft - θ_pre.

The grafted model is θ(γ) = θ_pre + γ ⊙ δ on a region R of weights. γ is relaxed as
γ = s + (1 - 2s) ⊙ σ(S - b), where s ∈ {0, 1} is the base patch (the top ρN entries of |δ|, the
engine's exact global top-k) and S ~ U[0, 1) are scores from a seeded generator. Each epoch
accumulates ∂L/∂θ at θ(γ) over the batches (mean over batches, as the reference), takes one plain SGD
step on S with ∂L/∂S = (1 - 2s) ⊙ (∂L/∂θ ⊙ δ) ⊙ σ'(S - b), and evaluates the rounded mask γ > 0.5.
The scores with the best evaluation are kept.

Where this differs from the reference (src/graft_trainer.py), on purpose:

* θ(γ) is written entry-wise as ``θ_pre`` where γ = 0 and ``θ_ft`` (the stored fine-tuned values) where
  γ = 1, so the binary graft is bit-exact (θ_pre + 1·δ can differ from θ_ft by one rounding in fp32).
  The reference adds ``frac * δ`` to the weights and subtracts it back, which drifts by rounding.
* The model is restored by copying the stored θ_pre, not by ``p += pre - p``.
* The base patch (epoch 0) is evaluated too, so the result is never worse than it on the eval score;
  the reference only compares masks after the first step, against a baseline of 0.
* Rounding is ``γ > 0.5`` (the reference's ``torch.round`` sends 0.5 to 0 as well: same result).
* The model runs in eval mode (no dropout) while grafting, so a graft is deterministic given the seed.

Memory: besides the model, :func:`graft` holds for every entry of R, on the weights' device, θ_pre and
θ_ft (the weights' dtype) and δ, S, s and the epoch's gradient sum (fp32): 2·2 + 4·4 = 20 bytes per
bf16 entry, 24 per fp32 entry, plus the best S (4 more). The batches are kept in a list. The plugin adds
its CPU snapshot of θ_pre on R and, during ``post_train``, one more copy of the trained weights on R.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ftplugins.errors import FtpluginsError, UnsupportedModelError
from ftplugins.sparse.delta import SparseDelta, diff_delta
from ftplugins.sparse.selection import global_topk_indices
from ftplugins.sparse.targets import target_weights

logger = logging.getLogger("ftplugins.graft")

#: The plugin's artifact in output_dir.
DELTA_FILE = "graft_delta.safetensors"

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class GraftResult:
    """What :func:`graft` found.

    Attributes:
        masks: per tensor of R, the final binary mask (bool, the tensor's shape): rounded γ of the best scores.
        delta: the engine's :class:`~ftplugins.sparse.SparseDelta` of γ ⊙ δ on ``masks`` (fp64, exact:
            applied to θ_pre it gives θ_ft on the mask and θ_pre elsewhere, bit for bit).
        history: one dict per evaluation: ``epoch`` (0 = the base patch), ``score``, ``nnz``, ``changed``
            (entries where the rounded mask differs from the base patch).
        best_epoch: the epoch whose scores were kept; best_score: their evaluation.
        base_patch_nnz: entries in the base patch s; region_numel: N.
        scores: the kept scores S per tensor (fp32).
    """

    masks: dict[str, torch.Tensor]
    delta: SparseDelta
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    base_patch_nnz: int = 0
    region_numel: int = 0
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def mask_moved(self) -> bool:
        """Whether the optimisation ever changed the rounded mask: when it did not, the graft is the base patch
        (the top ρN of |δ|), and ``lr`` is too small for this model's gradients to flip an entry."""
        return any(h.get("changed", 0) > 0 for h in self.history)


def default_region(model: nn.Module) -> list[str]:
    """R: every 2-D float weight except the input embeddings and the output head (tied or not)."""
    names = target_weights(model, ndim=2)
    if not names:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(f"graft found no 2-D float weight outside the embeddings and the output head in "
                                    f"model type {model_type!r}; pass region=[names] to choose the weights to graft.")
    return names


def base_patch_size(numel: int, density: float) -> int:
    """floor(ρN), so that the base patch never exceeds the density (the reference's ``int(ρ N)``)."""
    return min(numel, int(density * numel))


def interpolate(pre: torch.Tensor, ft: torch.Tensor, delta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """θ_pre + γ ⊙ δ, exactly θ_pre where γ = 0 and exactly θ_ft where γ = 1."""
    mixed = (pre.to(torch.float32) + gamma * delta).to(pre.dtype)
    return torch.where(gamma == 0, pre, torch.where(gamma == 1, ft, mixed))


def _tensors_of(source: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.named_parameters())
    return source


def _mean_loss(model: nn.Module, loss_fn: LossFn, batches: list) -> float:
    with torch.no_grad():
        losses = [float(loss_fn(model, batch)) for batch in batches]
    return sum(losses) / max(1, len(losses))


def graft(
    pretrained_model: nn.Module,
    finetuned_model: nn.Module | Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    batches: Iterable[Any],
    *,
    region: Iterable[str] | None = None,
    density: float = 1e-3,
    sigmoid_bias: float = 10.0,
    lr: float = 1e7,
    epochs: int = 10,
    eval_fn: Callable[[nn.Module], float] | None = None,
    seed: int = 0,
    keep_graft: bool = False,
    hold_density: bool = False,
) -> GraftResult:
    """Learn a sparse binary graft of ``finetuned_model`` onto ``pretrained_model``; see the module docstring.

    Works **in place** on ``pretrained_model`` (no copy of the model is made): its weights in R are
    overwritten with θ(γ) during the optimisation and restored to θ_pre, bit for bit, after every
    evaluation and at the end; with ``keep_graft=True`` it ends holding the best binary graft instead.
    Weights outside R are never touched. ``finetuned_model`` is a model or a name -> tensor mapping
    with the same names and shapes on R. ``loss_fn(model, batch)`` returns a scalar loss; ``batches``
    is materialised into a list (it is walked once per epoch). ``eval_fn(model) -> float``, higher is
    better, defaults to minus the mean loss over ``batches``.

    The paper bounds only the base patch by ρ: the optimisation may switch on more entries than it switches off
    (1% grew to 2.5% in our grafting scenario). ``hold_density=True`` makes ρ a guarantee: every rounded mask
    (each evaluation and the result) is projected to its top floor(ρN) entries by γ.
    """
    if not (0.0 < density <= 1.0):
        raise FtpluginsError(f"graft density {density!r}: expected a fraction in (0, 1]")
    batches = list(batches)
    if not batches:
        raise FtpluginsError("graft needs at least one batch to compute the mask's gradient; got none")
    params = dict(pretrained_model.named_parameters())
    names = list(region) if region is not None else default_region(pretrained_model)
    finetuned = _tensors_of(finetuned_model)
    for name in names:
        if name not in params:
            raise FtpluginsError(f"graft region names {name!r}, which the pretrained model does not have")
        if name not in finetuned:
            raise FtpluginsError(f"graft region names {name!r}, which the fine-tuned model does not have")
        if tuple(finetuned[name].shape) != tuple(params[name].shape):
            raise FtpluginsError(f"cannot graft {name}: pretrained shape {tuple(params[name].shape)}, fine-tuned "
                                 f"{tuple(finetuned[name].shape)}")
    if eval_fn is None:
        def eval_fn(model):
            return -_mean_loss(model, loss_fn, batches)

    with torch.no_grad():
        pre = {n: params[n].detach().clone() for n in names}
        ft = {n: finetuned[n].detach().to(device=pre[n].device, dtype=pre[n].dtype).clone() for n in names}
        delta = {n: ft[n].to(torch.float32) - pre[n].to(torch.float32) for n in names}
        numel = sum(pre[n].numel() for n in names)
        k = base_patch_size(numel, density)
        chosen = global_topk_indices({n: (lambda n=n: delta[n].abs()) for n in names}, k)
        base = {}
        for n in names:
            mask = torch.zeros(pre[n].numel(), dtype=torch.float32, device=pre[n].device)
            mask[chosen[n].to(mask.device)] = 1.0
            base[n] = mask.view_as(pre[n])
        generator = torch.Generator().manual_seed(int(seed))
        scores = {n: torch.rand(pre[n].shape, generator=generator).to(pre[n].device) for n in names}

    def gamma_of(current: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        s = base[name]
        return s + (1.0 - 2.0 * s) * torch.sigmoid(current[name] - sigmoid_bias)

    def rounded(current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gammas = {n: gamma_of(current, n) for n in names}
        masks = {n: g > 0.5 for n, g in gammas.items()}
        if not hold_density or sum(int(m.sum()) for m in masks.values()) <= k:
            return masks
        # the budget: the k entries of the rounded mask with the largest gamma (all of them are > 0.5)
        keep = global_topk_indices({n: (lambda n=n: torch.where(masks[n], gammas[n], 0.0)) for n in names}, k)
        projected = {}
        for n in names:
            flat = torch.zeros(masks[n].numel(), dtype=torch.bool, device=masks[n].device)
            flat[keep[n].to(flat.device)] = True
            projected[n] = flat.view_as(masks[n])
        return projected

    @torch.no_grad()
    def write(gammas: Mapping[str, torch.Tensor]) -> None:
        for n in names:
            params[n].copy_(interpolate(pre[n], ft[n], delta[n], gammas[n].to(torch.float32)))

    @torch.no_grad()
    def restore() -> None:
        for n in names:
            params[n].copy_(pre[n])

    history: list[dict[str, float]] = []

    def evaluate(epoch: int) -> float:
        masks = rounded(scores)
        write(masks)
        try:
            with torch.no_grad():
                score = float(eval_fn(pretrained_model))
        finally:
            restore()
        history.append({"epoch": epoch, "score": score, "nnz": sum(int(m.sum()) for m in masks.values()),
                        "changed": sum(int((m != base[n].bool()).sum()) for n, m in masks.items())})
        return score

    was_training = pretrained_model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    pretrained_model.eval()
    try:
        best_score, best_epoch = evaluate(0), 0
        best = {n: scores[n].clone() for n in names}
        for epoch in range(1, int(epochs) + 1):
            with torch.no_grad():
                write({n: gamma_of(scores, n) for n in names})
            for n, p in params.items():
                p.requires_grad_(n in pre)
                p.grad = None
            total = {n: torch.zeros_like(delta[n]) for n in names}
            with torch.enable_grad():
                for batch in batches:
                    loss = loss_fn(pretrained_model, batch)
                    loss.backward()
                    for n in names:
                        if params[n].grad is not None:
                            total[n] += params[n].grad.to(torch.float32)
                        params[n].grad = None
            restore()
            with torch.no_grad():
                for n in names:
                    sig = torch.sigmoid(scores[n] - sigmoid_bias)
                    grad = (1.0 - 2.0 * base[n]) * (total[n] / len(batches)) * delta[n] * sig * (1.0 - sig)
                    scores[n] -= lr * grad
            score = evaluate(epoch)
            if score > best_score:
                best_score, best_epoch = score, epoch
                best = {n: scores[n].clone() for n in names}
    finally:
        restore()
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        pretrained_model.train(was_training)

    masks = rounded(best)
    with torch.no_grad():
        grafted = {n: torch.where(masks[n], ft[n], pre[n]) for n in names}
        result_delta = diff_delta(grafted, pre, names)
        result_delta.metadata.update({
            "method": "graft", "graft_density": str(density), "graft_sigmoid_bias": str(sigmoid_bias),
            "graft_lr": str(lr), "graft_epochs": str(epochs), "graft_best_epoch": str(best_epoch),
            "graft_nnz": str(sum(int(m.sum()) for m in masks.values())), "graft_region_numel": str(numel),
            "graft_hold_density": str(bool(hold_density)),
        })
        if keep_graft:
            for n in names:
                params[n].copy_(grafted[n])
    return GraftResult(masks={n: m.cpu() for n, m in masks.items()}, delta=result_delta, history=history,
                       best_epoch=best_epoch, best_score=best_score, base_patch_nnz=k, region_numel=numel,
                       scores={n: t.cpu() for n, t in best.items()})


# --- the trainer side: θ_pre snapshot (prepare_model), graft after training (post_train) -------------


def snapshot_pretrained(model: nn.Module) -> dict[str, Any]:
    """θ_pre on the default region, copied to the CPU (one copy of R in the weights' dtype)."""
    if getattr(model, "peft_config", None):
        raise FtpluginsError("graft grafts the base model's own fine-tuned weights; this model carries a PEFT "
                             "adapter (--use_peft or another plugin): drop one of the two.")
    region = default_region(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        pretrained = {n: params[n].detach().to("cpu", copy=True) for n in region}
    return {"region": region, "pretrained": pretrained}


def _finetuned_weights(path: str, region: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise FtpluginsError(f"--graft_finetuned_path {path!r} is not a folder; pass a save_pretrained() folder")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    found: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(os.path.join(path, shard), framework="pt") as handle:
            for key in handle.keys():
                if key in region:
                    found[key] = handle.get_tensor(key)
    missing = [n for n in region if n not in found]
    if missing:
        raise FtpluginsError(f"--graft_finetuned_path {path!r} lacks {len(missing)} weight(s) to graft, e.g. "
                             f"{missing[:3]}; it must be a fine-tune of the same architecture (safetensors)")
    return found


def graft_after_training(trainer: Any, options: Any, state: dict[str, Any]) -> GraftResult:
    """Graft θ_ft (the trained weights or graft_finetuned_path) onto θ_pre in the trainer's model; save the delta."""
    from ftplugins.sparse.delta import save_delta

    model = trainer.model
    region = state["region"]
    params = dict(model.named_parameters())
    with torch.no_grad():
        trained = {n: params[n].detach().clone() for n in region}
    finetuned = _finetuned_weights(options.graft_finetuned_path, region) if options.graft_finetuned_path else trained
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append(batch)
        if len(batches) >= options.graft_max_batches:
            break

    from ftplugins.compat import prepare_inputs, trainer_metrics

    def loss_fn(m, batch):
        return trainer.compute_loss(m, prepare_inputs(trainer, batch))

    try:
        with torch.no_grad():
            for n in region:  # the model becomes θ_pre on R; graft() works in place on it
                params[n].copy_(state["pretrained"][n].to(params[n].device))
        result = graft(model, finetuned, loss_fn, batches, region=region, density=options.graft_density,
                       sigmoid_bias=options.graft_sigmoid_bias, lr=options.graft_lr, epochs=options.graft_epochs,
                       seed=trainer.args.seed, hold_density=options.graft_hold_density)
    finally:
        with torch.no_grad():
            for n in region:  # the trainer keeps the weights it trained (what it saves)
                params[n].copy_(trained[n])
    metrics = trainer_metrics(trainer)
    if metrics is not None:
        metrics.clear()  # the graft's loss calls are not training steps
    logger.info("graft: %d of %d entries, best epoch %d (score %.4g)", result.nnz, result.region_numel,
                result.best_epoch, result.best_score)
    if options.graft_epochs > 0 and not result.mask_moved:
        logger.warning("graft: the mask never changed from the base patch (the top graft_density of |θ_ft - θ_pre|) "
                       "in %d epochs: at graft_lr=%g this model's score gradients are too small to flip an entry, so "
                       "the graft is the base patch. Raise --graft_lr (it scales with 1 / the gradients; try 100x) "
                       "to optimise the mask.", options.graft_epochs, options.graft_lr)
    if options.graft_save_delta and trainer.args.should_save:
        save_delta(result.delta, os.path.join(trainer.args.output_dir, DELTA_FILE))
    return result
