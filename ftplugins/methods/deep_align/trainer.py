"""The deep_align loss: TRL's SFT loss with every response token's NLL weighted by w_t.

:func:`compute_loss` (the plugin's ``compute_loss`` hook) does not re-implement the SFT loss.
``SFTTrainer.compute_loss`` calls the model through TRL's fused LM head, which returns the
per-token log-probs of the labels (no ``[batch, seq, vocab]`` logits), and takes
``-sum(log_probs) / num_items_in_batch``. For the duration of that call we hook the model's output
and multiply ``log_probs`` by the detached weights w_t (:mod:`.objective`). Everything else is
TRL's: normalisation by the label tokens of the whole accumulated batch (``num_items_in_batch``,
across devices), DDP scaling, MoE auxiliary loss, entropy / accuracy metrics. So the loss is the
token-level mean of w_t * NLL over the accumulated batch - where the reference code takes a mean
per micro-batch and divides by the accumulation steps - and with w_t = 1 (theta = theta_ref, or
beta -> 0) it *is* SFT's loss, value and gradient.

The reference log-probs come from :mod:`ftplugins.objectives.ref_logprobs`: precomputed into the
training set when ``train()`` starts (the ``train_begin`` hook, before a checkpoint is loaded, so
from the initial weights), or on the fly per batch. Evaluation reports the plain SFT NLL (no
reference for eval sets), so eval losses compare directly with an SFT run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ftplugins.compat import sft_collator, trainer_metrics
from ftplugins.errors import FtpluginsError
from ftplugins.objectives.ref_logprobs import (
    REF_COLUMN,
    add_reference_column,
    collate_reference,
    frozen_copy,
    has_adapter,
    precompute_reference,
    reference_token_logprobs,
)

from .objective import beta_schedule, response_positions, token_weights

STATE_KEY = "deep_align"


@dataclass
class ReferenceState:
    """Per-run reference bookkeeping (``run.state["deep_align"]``)."""

    ref_model: Any = None  # frozen copy: full fine-tuning with on-the-fly values only
    precomputed: bool = False


class ReferenceColumnCollator:
    """Wraps the trainer's collator: moves the precomputed values of the rows into the batch.

    The wrapped collator never sees :data:`REF_COLUMN`; the batch gets it laid out like its
    ``input_ids`` (padded, or concatenated for padding-free batches).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        values = [f[REF_COLUMN] for f in features if REF_COLUMN in f]
        if not values:
            return self.collator(features)
        if len(values) != len(features):
            raise FtpluginsError("deep_align: some rows of a batch have precomputed reference log-probs and some not.")
        batch = self.collator([{k: v for k, v in f.items() if k != REF_COLUMN} for f in features])
        batch[REF_COLUMN] = collate_reference(values, batch["input_ids"])
        return batch


class TokenReweighting:
    """A forward hook that multiplies the fused head's ``log_probs`` by the deep-alignment weights."""

    def __init__(self, ref_log_probs: torch.Tensor, segment_starts: torch.Tensor | None, options: Any) -> None:
        self.ref_log_probs = ref_log_probs
        self.segment_starts = segment_starts
        self.options = options
        self.calls = 0
        self.weight_mean = self.delta_mean = 0.0

    def __call__(self, module: Any, args: Any, kwargs: dict, output: Any) -> Any:
        if not kwargs.get("fused_lm_head"):
            return None
        log_probs, mask = output.log_probs, output.label_mask
        ref = self.ref_log_probs.to(log_probs.device)
        if ref.shape != log_probs.shape:
            raise FtpluginsError(
                f"deep_align: reference log-probs of shape {tuple(ref.shape)} for log-probs of shape "
                f"{tuple(log_probs.shape)}; prompt-learning adapters (virtual tokens) are not supported."
            )
        starts = None if self.segment_starts is None else self.segment_starts.to(mask.device)
        o = self.options
        betas = beta_schedule(response_positions(mask, starts), o.deep_align_beta, o.deep_align_first_token_factor,
                              o.deep_align_bias_factor, o.deep_align_bias_length)
        weights = token_weights(log_probs, ref, betas)
        output.log_probs = log_probs * weights.to(log_probs.dtype)
        self.calls += 1
        scored = mask.sum().clamp(min=1)
        self.weight_mean = float((weights * mask).sum() / scored)
        self.delta_mean = float(((log_probs.detach().float() - ref) * mask).sum() / scored)
        return output

    @contextlib.contextmanager
    def installed(self, model: torch.nn.Module) -> Iterator[TokenReweighting]:
        handle = model.register_forward_hook(self, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()


def options_of(run: Any) -> Any:
    return run.options_for("deep_align")


def state_of(run: Any) -> ReferenceState:
    return run.state.setdefault(STATE_KEY, ReferenceState())


def prepare_reference(run: Any, trainer: Any) -> None:
    """Precompute the reference log-probs, or make the frozen copy; once per run, before any update."""
    opts = options_of(run)
    if opts.deep_align_objective != "constrained":
        return
    if getattr(trainer, "compute_loss_func", None) is not None:
        raise FtpluginsError(
            "deep_align reweights SFTTrainer's own token loss, and a compute_loss_func replaces it; drop "
            "compute_loss_func or deep_align."
        )
    state = state_of(run)
    model = trainer.model
    if opts.deep_align_ref == "on_the_fly":
        if state.ref_model is None and not has_adapter(model):
            device = next(model.parameters()).device
            state.ref_model = frozen_copy(model).to(device)
        return
    if state.precomputed:
        return
    dataset = trainer.train_dataset
    if not hasattr(dataset, "add_column"):
        raise FtpluginsError(
            f"deep_align_ref=precompute stores the reference log-probs with the rows, which a "
            f"{type(dataset).__name__} cannot hold; use deep_align_ref=on_the_fly."
        )
    values = precompute_reference(
        model,
        dataset,
        reference_collator(trainer),
        batch_size=trainer.args.per_device_eval_batch_size,
        device=next(model.parameters()).device,
        # full fine-tuning: the model has not been updated yet, so it is its own reference
        ref_model=None if has_adapter(model) else model,
        accelerator=trainer.accelerator,
        progress=not trainer.args.disable_tqdm and trainer.is_local_process_zero(),
        autocast=trainer.accelerator.autocast,  # the training forward's precision (bf16 by TRL's default)
    )
    trainer.train_dataset = add_reference_column(dataset, values)
    state.precomputed = True


def reference_collator(trainer: Any) -> Any:
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    return sft_collator(tokenizer.pad_token_id, padding_free=bool(getattr(trainer, "padding_free", False)))


def compute_loss(run: Any, trainer: Any, model: Any, inputs: dict[str, Any], inner: Any) -> Any:
    """SFT's loss with the token weights applied to the fused head's log-probs (``compute_loss`` hook)."""
    stored = inputs.pop(REF_COLUMN, None)
    opts = options_of(run)
    if opts.deep_align_objective != "constrained" or not trainer.model.training:
        return inner(inputs=inputs)
    reference = reference_log_probs(run, trainer, model, inputs, stored)
    starts = inputs["position_ids"][:, 1:] == 0 if "position_ids" in inputs else None
    reweighting = TokenReweighting(reference, starts, opts)
    with reweighting.installed(model):
        result = inner(inputs=inputs)
    if reweighting.calls != 1:
        raise FtpluginsError(
            "deep_align: the trainer's compute_loss did not call the model once with TRL's fused LM head "
            f"({reweighting.calls} calls), so the token weights could not be applied; label smoothing, "
            "compute_loss_func and sequence parallelism take other loss paths and are not supported."
        )
    metrics = trainer_metrics(trainer)
    if metrics is not None:
        metrics["deep_align/weight"].append(reweighting.weight_mean)
        metrics["deep_align/delta"].append(reweighting.delta_mean)
    return result


def reference_log_probs(run: Any, trainer: Any, model: Any, inputs: dict[str, Any],
                        stored: torch.Tensor | None) -> torch.Tensor:
    opts = options_of(run)
    if opts.deep_align_ref == "precompute":
        if stored is None:
            raise FtpluginsError(
                "deep_align: a training batch has no precomputed reference log-probs; call trainer.train() (which "
                "precomputes them) or set deep_align_ref=on_the_fly."
            )
        return stored[:, 1:]
    state = state_of(run)
    if state.ref_model is None and not has_adapter(model):
        prepare_reference(run, trainer)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return reference_token_logprobs(
        trainer.accelerator.unwrap_model(model), model_inputs, inputs["labels"], ref_model=state.ref_model,
        autocast=trainer.accelerator.autocast,
    )
