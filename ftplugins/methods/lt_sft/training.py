"""The torch side of LT-SFT: targets, phase 1 (full fine-tuning), the ticket, phase 2's optimizer.

How the two phases map onto one ``trainer.train()``:

* Phase 1 runs inside the ``create_optimizer`` hook, i.e. when the Trainer starts training and asks
  for its optimizer: a plain loop of ``lt_sft_phase1_steps`` AdamW steps (the Trainer's learning
  rate, betas, weight decay (decay/no-decay groups as the Trainer's), warm-up, schedule type,
  gradient accumulation and clipping, a scheduler of its own) over the Trainer's own dataloader and
  ``compute_loss``. Its steps are not counted in ``global_step`` and are not logged.
* The ticket is selected, the weights are reset to θ_prev (the weights before phase 1), and the hook
  returns a fresh :class:`~ftplugins.sparse.SparseAdamW` with the fixed masks; the Trainer builds a
  fresh scheduler around it and its whole loop (``max_steps`` / epochs) is phase 2.
* Resume: a checkpoint is always from phase 2. When ``train(resume_from_checkpoint=...)`` the hook
  skips phase 1 and returns a SparseAdamW with empty masks; the Trainer then loads the checkpoint's
  optimizer state, which holds the masks (sorted indices), the moments and θ0 at the selected
  entries (``track_origin``), so the resumed run ends with the weights of the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ftplugins.compat import prepare_inputs, trainer_metrics
from ftplugins.errors import FtpluginsError, UnsupportedModelError
from ftplugins.sparse.optimizer import SparseAdamW, release_grad_hooks
from ftplugins.sparse.selection import global_topk_indices

logger = logging.getLogger("ftplugins.lt_sft")


def split_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(maskable, head)``: every float parameter of the base model, and the output head's (trained dense).

    As the reference, the head (``get_output_embeddings``) is not maskable; input embeddings tied to
    it are the head's tensor and train dense too.
    """
    head_ids: set[int] = set()
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is not None and getattr(output, "weight", None) is not None:
        head_ids.add(id(output.weight))
        if getattr(output, "bias", None) is not None:
            head_ids.add(id(output.bias))
    maskable, head, seen = [], [], set()
    for name, param in model.named_parameters():
        if id(param) in seen or not param.is_floating_point():
            continue
        seen.add(id(param))
        (head if id(param) in head_ids else maskable).append(name)
    return maskable, head


def prepare(model: nn.Module) -> dict[str, list[str]]:
    if getattr(model, "peft_config", None):
        raise FtpluginsError("lt_sft fine-tunes the base model's own weights (full FT, then a sparse subset); this "
                             "model carries a PEFT adapter (--use_peft or another plugin): drop one of the two.")
    maskable, head = split_targets(model)
    if not maskable:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(f"lt_sft found no float parameter outside the output head in model type "
                                    f"{model_type!r}; it selects entries of the base model's float weights.")
    wanted = set(maskable) | set(head)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)  # phase 1 is full fine-tuning
    return {"maskable": maskable, "head": head}


def budget(numel: int, options: Any) -> int:
    """K: ``lt_sft_k`` or ``round(proportion * numel)`` (at least 1), capped at ``numel``."""
    k = options.lt_sft_k if options.lt_sft_k > 0 else max(1, int(round(options.lt_sft_proportion * numel)))
    return min(int(k), numel)


def phase2_steps(trainer: Any) -> int:
    """How many optimizer steps the Trainer's own loop (phase 2) will make."""
    args = trainer.args
    if args.max_steps > 0:
        return int(args.max_steps)
    batches = len(trainer.get_train_dataloader())
    return int(math.ceil(args.num_train_epochs * max(1, batches // args.gradient_accumulation_steps)))


def run_phase1(trainer: Any, model: nn.Module, names: list[str], steps: int) -> None:
    """Full fine-tuning of ``names`` for ``steps`` optimizer steps (a loop of its own, not the Trainer's)."""
    args = trainer.args
    params = dict(model.named_parameters())
    decay = set(trainer.get_decay_parameter_names(model))
    groups = [{"params": [params[n] for n in names if n in decay], "weight_decay": args.weight_decay},
              {"params": [params[n] for n in names if n not in decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    run_loop(trainer, model, optimizer, steps)


def run_loop(trainer: Any, model: nn.Module, optimizer: Any, steps: int) -> None:
    """``steps`` optimizer steps of ``optimizer`` over the Trainer's dataloader and ``compute_loss``, with the
    Trainer's gradient accumulation, clipping, warm-up and schedule type (a scheduler of its own)."""
    from transformers import get_scheduler

    args = trainer.args
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    dataloader = trainer.get_train_dataloader()
    batches = iter(dataloader)
    accumulation = max(1, int(args.gradient_accumulation_steps))
    sparse = isinstance(optimizer, SparseAdamW)  # clips its compact gradients itself
    was_training = model.training
    model.train()
    for _ in range(steps):
        for _ in range(accumulation):
            try:
                batch = next(batches)
            except StopIteration:  # a phase longer than an epoch: the next epoch
                batches = iter(dataloader)
                batch = next(batches)
            loss = trainer.compute_loss(model, prepare_inputs(trainer, batch))
            (loss / accumulation).backward()
        if not sparse and args.max_grad_norm and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.train(was_training)
    metrics = trainer_metrics(trainer)
    if metrics is not None:
        metrics.clear()  # these steps' token counts / accuracies are not the Trainer loop's


def build_optimizer(model: nn.Module, args: Any, options: Any, targets: dict[str, list[str]],
                    selection: dict[str, Any]) -> SparseAdamW:
    """Phase 2's SparseAdamW: fixed masks on the maskable tensors (L1 toward θ0), the head dense."""
    params = dict(model.named_parameters())
    maskable, head = targets["maskable"], targets["head"]
    missing = [n for n in maskable + head if n not in params]
    if missing:
        raise FtpluginsError(f"lt_sft: the model no longer has the weights it prepared, e.g. {missing[:2]}; "
                             "a plugin after lt_sft replaced them")
    total = sum(params[n].numel() for n in maskable)
    groups = [{"params": [(n, params[n]) for n in maskable], "l1": options.lt_sft_l1 / total}]
    if head:
        groups.append({"params": [(n, params[n]) for n in head], "l1": 0.0})
    max_grad_norm = getattr(args, "max_grad_norm", None)
    return SparseAdamW(
        groups,
        {**selection, **{n: None for n in head}},
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        max_grad_norm=max_grad_norm if max_grad_norm and max_grad_norm > 0 else None,
        track_origin=True,  # θ0 at the selected entries: the delta, and the L1 pull
    )


@torch.no_grad()
def find_ticket(trainer: Any, model: nn.Module, options: Any, targets: dict[str, list[str]]) -> dict[str, Any]:
    """Every iteration but the Trainer's last phase 2; returns the masks (indices) and θ0 where they trained.

    Iteration i of n: snapshot θ_prev, phase 1 (full fine-tuning), add the K/n not-yet-selected entries
    with the largest |θ - θ_prev| (= |θ - θ0| there: unselected entries never moved) to the masks,
    reset θ ← θ_prev, then phase 2 on all masks so far with a fresh SparseAdamW and scheduler. The last
    iteration's phase 2 is the Trainer's own loop (the optimizer returned by the hook).
    """
    params = dict(model.named_parameters())
    names = targets["maskable"] + targets["head"]
    steps = options.lt_sft_phase1_steps if options.lt_sft_phase1_steps > 0 else phase2_steps(trainer)
    k = budget(sum(params[n].numel() for n in targets["maskable"]), options)
    iterations = options.lt_sft_iterations
    selection: dict[str, torch.Tensor] = {}
    origin: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    for iteration in range(iterations):
        before = {n: params[n].detach().clone() for n in names}  # θ_prev (= θ0 in the first iteration)
        with torch.enable_grad():
            run_phase1(trainer, model, names, steps)
        share = k * (iteration + 1) // iterations - k * iteration // iterations
        added = global_topk_indices({n: _unselected_scores(params[n], before[n], selection.get(n))
                                     for n in targets["maskable"]}, share)
        for name in names:
            params[name].detach().copy_(before[name])  # phase 1's weights are discarded
        del before
        selection = {n: _union(selection.get(n), added[n]) for n in targets["maskable"]}
        if iteration < iterations - 1:
            optimizer = build_optimizer(model, trainer.args, options, targets, selection)
            restore_origin(optimizer, origin)
            with torch.enable_grad():
                run_loop(trainer, model, optimizer, phase2_steps(trainer))
            origin = origin_of(optimizer)
            release_grad_hooks(optimizer.trained_params())
            del optimizer
    logger.info("lt_sft: %d iteration(s), phase 1 of %d steps each; %d entries selected", iterations, steps, k)
    return {"selection": selection, "origin": origin, "phase1_steps": steps, "k": k}


def _unselected_scores(param: torch.Tensor, before: torch.Tensor, selected: torch.Tensor | None):
    """|θ - θ_prev| (LT-SFT's score), with the entries already in the masks pushed below every candidate (-1)."""

    def scores():
        out = (param.detach() - before).abs()
        if selected is not None and selected.numel():
            out.view(-1).index_fill_(0, selected.long(), -1.0)
        return out

    return scores


def _union(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None or not a.numel() else torch.unique(torch.cat([a.long(), b.long()]), sorted=True)


def origin_of(optimizer: SparseAdamW) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """θ0 where ``optimizer`` trained: ``{name: (flat indices or None for dense, values)}`` (copies)."""
    out = {}
    for name, param in optimizer.named_params():
        state = optimizer.state[param]
        indices = state["origin_indices"]
        out[name] = (None if indices is None else indices.clone(), state["origin_values"].clone())
    return out


def restore_origin(optimizer: SparseAdamW, origin: dict[str, tuple[torch.Tensor | None, torch.Tensor]]) -> None:
    """Make a fresh optimizer's θ0 (taken from the current weights) the true θ0 where earlier iterations trained,
    so that the delta and the L1 pull are measured from the base model, not from this phase's start."""
    for name, param in optimizer.named_params():
        if name not in origin:
            continue
        earlier, values = origin[name]
        state = optimizer.state[param]
        current = state["origin_indices"]
        if current is None and earlier is None:
            state["origin_values"].copy_(values)
        elif current is None:
            state["origin_values"].index_copy_(0, earlier.long(), values)
        elif earlier is not None and earlier.numel():
            at = torch.searchsorted(current.long(), earlier.long())
            state["origin_values"].index_copy_(0, at, values)


def placeholder_selection(model: nn.Module, targets: dict[str, list[str]]) -> dict[str, Any]:
    """Empty masks, replaced by the checkpoint's when the Trainer loads the optimizer state (resume)."""
    params = dict(model.named_parameters())
    return {n: torch.empty(0, dtype=torch.int64, device=params[n].device) for n in targets["maskable"]}


def save_delta_of(trainer: Any, options: Any, info: dict[str, Any]) -> str | None:
    """Write ``output_dir/sparse_delta.safetensors`` (main process only); returns its path."""
    from ftplugins.sparse.trainer import save_trainer_delta

    return save_trainer_delta(trainer, "lt_sft", {
        "lt_sft_k": str(info.get("k", options.lt_sft_k)),
        "lt_sft_proportion": str(options.lt_sft_proportion),
        "lt_sft_iterations": str(options.lt_sft_iterations),
        "lt_sft_l1": str(options.lt_sft_l1),
    })
