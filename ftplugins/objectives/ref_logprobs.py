"""The reference model's per-token log-probabilities, for objectives that stay close to the initial model.

The reference is the model as it was when training started:

* **with a PEFT adapter** (TRL's ``peft_config=`` / ``--use_peft``, or adapters added with
  transformers' ``add_adapter``): the same model with the adapter disabled - no second copy of the
  weights. (This is the initial model when the adapter starts as the identity, as LoRA does.)
* **full fine-tuning**: a frozen copy (:func:`frozen_copy`), one more set of weights in memory (no
  gradients, no optimizer state) - needed only to compute the values on the fly.

Two ways to get the values, as TRL's DPO ``precompute_ref_log_probs``:

* :func:`precompute_reference` - one no-grad pass over the dataset before training; the values are
  stored in the dataset as the column :data:`REF_COLUMN` (one float32 per token, aligned with
  ``input_ids``) and travel with each row through shuffling and collation
  (:func:`collate_reference`). Full fine-tuning then needs no copy at all; the price is 4 bytes per
  token of storage and one forward pass per example before the first step.
* :func:`reference_token_logprobs` - on the fly, one extra no-grad forward per batch: no storage,
  and the reference sees exactly the batch the model sees (e.g. inputs corrupted by a collator).

Both run through :func:`ftplugins.objectives.token_logprobs.token_logprobs`, so no full
``[batch, seq, vocab]`` logits tensor is built for the reference either.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

from .token_logprobs import has_fused_lm_head, token_logprobs, unwrap_model

#: Dataset column (and batch key) holding the precomputed reference log-probs.
REF_COLUMN = "ref_token_logps"


def find_peft_model(model: Any) -> Any:
    """The ``peft.PeftModel`` inside DDP / accelerate wrappers, or ``None``."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    while isinstance(getattr(model, "module", None), torch.nn.Module) and not isinstance(model, PeftModel):
        model = model.module
    return model if isinstance(model, PeftModel) else None


def has_adapter(model: Any) -> bool:
    """Whether disabling adapters gives the reference (a PEFT model, or transformers-integrated adapters)."""
    return find_peft_model(model) is not None or bool(getattr(unwrap_model(model), "_hf_peft_config_loaded", False))


@contextlib.contextmanager
def reference_model(model: Any, ref_model: Any = None) -> Iterator[Any]:
    """Yield the module whose outputs are the reference's, in eval mode (dropout off).

    ``ref_model`` when given (a frozen copy); otherwise ``model`` with its adapters disabled. A
    model without adapters and no ``ref_model`` has no reference: that is an error, not silently
    the trained model itself.
    """
    if ref_model is not None:
        target, scope = ref_model, contextlib.nullcontext()
    elif (peft_model := find_peft_model(model)) is not None:
        target, scope = peft_model, peft_model.disable_adapter()
    elif getattr(unwrap_model(model), "_hf_peft_config_loaded", False):
        target, scope = unwrap_model(model), _transformers_adapters_disabled(unwrap_model(model))
    else:
        raise FtpluginsError(
            f"no reference model: {type(unwrap_model(model)).__name__} has no PEFT adapter to disable and no frozen "
            "reference copy was given; pass ref_model= (full fine-tuning) or train an adapter."
        )
    modes = [(module, module.training) for module in target.modules()]
    target.eval()
    try:
        with scope:
            yield target
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _transformers_adapters_disabled(model: Any) -> Iterator[None]:
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def reference_token_logprobs(
    model: Any, inputs: dict[str, Any], labels: torch.Tensor, *, ref_model: Any = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """The reference's log-prob of each next-token label, ``[batch, seq - 1]`` float32, no gradient.

    ``autocast``: the context the training forward runs in (``trainer.accelerator.autocast``). Under mixed
    precision the reference must be computed in it too, or policy and reference differ by rounding alone at
    theta = theta_ref (a bf16 vs fp32 forward), and "weights are exactly 1 at the start" no longer holds.
    """
    with torch.no_grad(), autocast(), reference_model(model, ref_model) as reference:
        log_probs, _ = token_logprobs(reference, inputs, labels)
    return log_probs.float()


def frozen_copy(model: Any) -> Any:
    """A frozen, eval-mode copy of ``model`` (the full fine-tuning reference for on-the-fly values).

    A forward patched onto the instance (TRL's fused LM head) is a closure over the original model,
    which ``deepcopy`` would keep calling; the copy gets a fresh patch of its own instead.
    """
    source = unwrap_model(model)
    clone = copy.deepcopy(source)
    vars(clone).pop("forward", None)
    if has_fused_lm_head(source):
        from ftplugins.compat import add_fused_lm_head

        add_fused_lm_head(clone)
    clone.requires_grad_(False)
    return clone.eval()


def precompute_reference(
    model: Any,
    dataset: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    batch_size: int,
    device: Any = None,
    ref_model: Any = None,
    accelerator: Any = None,
    progress: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[list[float]]:
    """The reference log-probs of every row of ``dataset``, one list per row aligned with its ``input_ids``.

    Entry ``t`` of a row is ``log p_ref(input_ids[t] | input_ids[:t])`` where ``labels[t] != -100``
    and 0 elsewhere (always 0 at ``t = 0``). ``collate`` builds a model batch from rows with
    ``input_ids`` and ``labels`` (and ``seq_lengths`` for packed rows), as the trainer's own
    collator does, padded or padding-free. With an ``accelerator`` of several processes, each
    computes every ``num_processes``-th row and the results are gathered on every process. ``autocast``: as for
    :func:`reference_token_logprobs`. (In bf16 a row's values still depend slightly on the padding of the
    batch it was computed in, which need not be the padding of its training batch.)
    """
    from tqdm.auto import tqdm

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    mine = list(range(rank, len(dataset), world))
    keep = [k for k in ("input_ids", "labels", "seq_lengths") if k in dataset.column_names]
    rows = dataset.select_columns(keep)
    values: list[tuple[int, list[float]]] = []
    starts = range(0, len(mine), batch_size)
    for start in tqdm(starts, desc="Reference log-probs", disable=not progress):
        indices = mine[start : start + batch_size]
        columns = rows[indices]
        features = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        batch = collate(features)
        labels = batch.pop("labels")
        if device is not None:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = labels.to(device)
        log_probs = reference_token_logprobs(model, batch, labels, ref_model=ref_model, autocast=autocast).cpu()
        lengths = [len(f["input_ids"]) for f in features]
        values.extend(zip(indices, split_rows(log_probs, lengths), strict=True))
    if world > 1:
        from accelerate.utils import gather_object

        values = gather_object(values)
    by_index = dict(values)
    return [by_index[i] for i in range(len(dataset))]


def split_rows(log_probs: torch.Tensor, lengths: Sequence[int]) -> list[list[float]]:
    """Per-row lists aligned with ``input_ids`` from a ``[rows, seq - 1]`` batch (or one padding-free row)."""
    if log_probs.shape[0] == len(lengths):
        return [[0.0, *log_probs[r, : n - 1].tolist()] for r, n in enumerate(lengths)]
    if log_probs.shape[0] != 1:
        raise ValueError(f"{log_probs.shape[0]} rows of log-probs for {len(lengths)} examples")
    out, offset = [], 0
    for n in lengths:  # padding-free: one concatenated row; entry offset + j - 1 scores token j of this example
        out.append([0.0, *log_probs[0, offset : offset + n - 1].tolist()])
        offset += n
    return out


def add_reference_column(dataset: Any, values: list[list[float]]) -> Any:
    """``dataset`` with :data:`REF_COLUMN` set to ``values`` (float32 lists)."""
    from datasets import Sequence as Feature
    from datasets import Value

    if REF_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(REF_COLUMN)
    return dataset.add_column(REF_COLUMN, values, feature=Feature(Value("float32")))


def collate_reference(values: list[list[float]], input_ids: torch.Tensor) -> torch.Tensor:
    """The precomputed values of a batch, laid out like its ``input_ids`` (padded, or one padding-free row)."""
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    if input_ids.shape[0] == len(values):
        for r, row in enumerate(values):
            out[r, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return out
    if input_ids.shape[0] != 1:
        raise ValueError(f"a batch of {input_ids.shape[0]} rows for {len(values)} examples")
    flat = torch.tensor([v for row in values for v in row], dtype=torch.float32)
    out[0, : flat.numel()] = flat
    return out
