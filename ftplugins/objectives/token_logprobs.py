"""Per-token log-probabilities of the labels, without materialising the ``[batch, seq, vocab]`` logits.

``token_logprobs(model, inputs, labels)`` returns ``log p(labels[:, t+1] | tokens <= t)`` for every
position, shape ``[batch, seq - 1]``, zero where the label is -100, together with the label mask.
Token-wise objectives (deep alignment, DPO-style references, distillation) reweight these values
instead of the model's own loss.

Two paths, same numbers up to float rounding:

* **TRL's fused LM head.** ``SFTTrainer`` patches its model with
  ``trl.trainer.utils.add_fused_lm_head``; called with ``fused_lm_head=True`` the model projects
  only the label positions through the LM head, in tiles (a Triton kernel on GPU), and returns the
  log-probs. When the patch is present we call the model through it, so plain SFT and a token-wise
  objective cost exactly the same memory, and wrappers (DDP, PEFT) see an ordinary forward.
* **Chunked fallback** (:func:`chunked_token_logprobs`) for unpatched models: the backbone's last
  hidden states are gathered at the label positions and projected ``chunk_size`` rows at a time.
  Under autograd each chunk is checkpointed, so the backward pass recomputes one chunk's logits at a
  time; at most ``chunk_size x vocab`` logits exist at once. It calls the backbone directly, past
  any DDP wrapper, so use it on unwrapped models (a frozen reference copy, a single process) when
  gradients must be synchronised.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ftplugins.errors import UnsupportedModelError

IGNORE_INDEX = -100
#: Label positions projected through the LM head at once by the fallback.
DEFAULT_CHUNK_SIZE = 4096


def unwrap_model(model: Any) -> Any:
    """The causal LM inside DDP / accelerate (``.module``) and PEFT (``get_base_model()``) wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def has_fused_lm_head(model: Any) -> bool:
    """Whether TRL's ``add_fused_lm_head`` patched the causal LM inside ``model``."""
    from ftplugins.compat import is_fused_lm_head_patched

    return is_fused_lm_head_patched(unwrap_model(model))


def token_logprobs(
    model: Any, inputs: dict[str, Any], labels: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_probs, mask)``, both ``[batch, seq - 1]``: the log-probability of each next-token label.

    Args:
        model: a causal LM, possibly wrapped (DDP, PEFT).
        inputs: the model inputs of the batch (``input_ids``, ``attention_mask`` or ``position_ids``
            ...), without ``labels``.
        labels: unshifted labels, ``-100`` where no token is scored (TRL's SFT batches).
        chunk_size: label positions projected at once by the fallback path.

    ``log_probs`` is float32 in the fallback and the model's dtype in the fused path; it is zero
    where ``mask`` is False and carries gradients when autograd is on.
    """
    if has_fused_lm_head(model):
        outputs = model(**{**inputs, "use_cache": False}, labels=labels, fused_lm_head=True)
        return outputs.log_probs, outputs.label_mask
    return chunked_token_logprobs(model, inputs, labels, chunk_size=chunk_size)


def chunked_token_logprobs(
    model: Any, inputs: dict[str, Any], labels: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback of :func:`token_logprobs`: backbone, then the LM head ``chunk_size`` rows at a time."""
    causal_lm = unwrap_model(model)
    backbone = getattr(causal_lm, "base_model", None)
    head = causal_lm.get_output_embeddings() if hasattr(causal_lm, "get_output_embeddings") else None
    if backbone is None or backbone is causal_lm or head is None:
        raise UnsupportedModelError(
            f"token log-probs need a causal LM with a backbone (base_model) and an output embedding (lm_head); "
            f"{type(causal_lm).__name__} has "
            f"{'no lm_head' if head is None else 'no separate backbone'}. Use a *ForCausalLM model."
        )
    hidden = backbone(**{**inputs, "use_cache": False}).last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    rows, row_targets = hidden[mask], targets[mask]
    scale, softcap = logit_transform(causal_lm.config)
    track = torch.is_grad_enabled() and (rows.requires_grad or head.weight.requires_grad)
    pieces = []
    for start in range(0, rows.size(0), chunk_size):
        args = (rows[start : start + chunk_size], head.weight, head.bias, row_targets[start : start + chunk_size])
        if track:
            # Only the chunk's hidden rows are kept for backward; its logits are recomputed there.
            pieces.append(checkpoint(label_logprobs, *args, scale, softcap, use_reentrant=False))
        else:
            pieces.append(label_logprobs(*args, scale, softcap))
    # no scored position: an empty slice of the hidden states keeps the result connected to the graph
    flat = torch.cat(pieces) if pieces else rows.float().sum(-1)
    # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero).
    return flat.new_zeros(mask.shape).masked_scatter(mask, flat), mask


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T + bias)[targets]`` in float32, for ``[rows, hidden]`` inputs."""
    logits = F.linear(hidden, weight, bias).float()
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def logit_transform(config: Any) -> tuple[float, float | None]:
    """(multiplier, soft cap) a model applies to its logits (Gemma-2 soft-capping, Cohere's logit_scale)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("logits_scaling", "lm_head_multiplier", "output_multiplier"):
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            raise UnsupportedModelError(
                f"{type(text_config).__name__} scales its logits by {name}, which the chunked token log-prob path "
                "does not reproduce; patch the model with trl.trainer.utils.add_fused_lm_head (SFTTrainer does)."
            )
    scale = getattr(text_config, "logit_scale", None)
    return (1.0 if scale is None else float(scale)), getattr(text_config, "final_logit_softcapping", None)
