"""Influence of training rows through inverse-Hessian-vector products (LiSSA), and per-row gradient norms.

DEALRec's influence of a row ``s`` on the empirical risk is ``I(s) = (H^-1 v)^T grad l(s)`` with
``v`` the mean training gradient and ``H`` the Hessian of the empirical risk, both at a small surrogate's
parameters. ``H^-1 v`` comes from the LiSSA recursion (Agarwal et al.; Koh & Liang's estimator)

    h_0 = v,   h_t = v + (1 - damping) h_{t-1} - (H_t h_{t-1}) / scale,   result h_T / scale

whose fixed point is ``(H + damping * scale * I)^-1 v``; each ``H_t h`` is a Hessian-vector product
by double back-propagation on a mini-batch, so no Hessian is ever formed and memory is a few parameter
vectors. ``scale`` must exceed the Hessian's largest eigenvalue for the recursion to converge; a
diverging recursion is reported, not returned; so is negative curvature beyond ``damping * scale`` (a surrogate
far from a minimum, e.g. untrained: DEALRec trains it on the pool first). The effort score is ``|grad l(s)|_2`` of
the model being fine-tuned. Gradients are taken w.r.t. a parameter subset (a LoRA's, or the last block's by default).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ftplugins.errors import FtpluginsError, UnsupportedModelError

from .tokens import pad_batch, row_tokens

AUTO = "auto"
_BLOCK = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


def select_parameters(model: Any, pattern: str = AUTO) -> list[tuple[str, Any]]:
    """``(name, parameter)`` pairs the gradients are taken over.

    ``auto``: a LoRA's parameters when the model has one (``lora_`` in the name), else the last transformer
    block's. Otherwise ``pattern`` is a regular expression searched in parameter names.
    """
    named = list(model.named_parameters())
    if pattern == AUTO:
        lora = [(n, p) for n, p in named if "lora_" in n]
        if lora:
            return lora
        blocks = [int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))]
        if not blocks:
            raise UnsupportedModelError(
                f"{type(model).__name__}: found no LoRA parameters and no numbered blocks (.layers.N.) to take "
                "gradients over; give a parameter regex (e.g. 'lm_head')."
            )
        last = f".{max(blocks)}."
        return [(n, p) for n, p in named if (m := _BLOCK.search(n)) and m.group(0).endswith(last)]
    chosen = [(n, p) for n, p in named if re.search(pattern, n)]
    if not chosen:
        raise UnsupportedModelError(f"{type(model).__name__}: no parameter name matches {pattern!r}.")
    return chosen


@contextlib.contextmanager
def grads_only_for(model: Any, params: list[Any]) -> Iterator[None]:
    """Gradients flow to ``params`` only (cheaper backward), eval mode, eager attention (fused attention kernels
    have no double backward, which Hessian-vector products need); everything restored afterwards."""
    chosen = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    switch = attention not in (None, "eager") and hasattr(model, "set_attn_implementation")
    model.eval()
    try:
        if switch:
            model.set_attn_implementation("eager")
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        if switch:
            model.set_attn_implementation(attention)
        model.train(was_training)


def row_losses(model: Any, tokenizer: Any, rows: list[dict], max_length: int):
    """Per-row mean cross-entropy over response tokens (a tensor with a graph)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention, response = pad_batch([row_tokens(tokenizer, r, max_length) for r in rows], pad)
    device = next(model.parameters()).device
    input_ids, attention, response = input_ids.to(device), attention.to(device), response.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    weight = response[:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * weight).sum(1) / weight.sum(1).clamp(min=1)


def flat(tensors) -> Any:
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def mean_gradient(loss_of: Callable[[list[int]], Any], params: list[Any], rows: int, batch_size: int):
    """``v = grad (1/N) sum_s l(s)``, accumulated batch by batch."""
    import torch

    total = None
    for start in range(0, rows, batch_size):
        grads = torch.autograd.grad(loss_of(list(range(start, min(start + batch_size, rows)))).sum(), params)
        total = flat(grads) if total is None else total + flat(grads)
    return total / rows


def hvp(loss, params: list[Any], vector):
    """Hessian-vector product of ``loss`` w.r.t. ``params`` by double back-propagation."""
    import torch

    grads = flat(torch.autograd.grad(loss, params, create_graph=True))
    return flat(torch.autograd.grad(grads @ vector, params)).detach()


def lissa(hvp_at: Callable[[Any, int], Any], v, depth: int, damping: float, scale: float):
    """``(H + damping * scale * I)^-1 v`` by the LiSSA recursion; ``hvp_at(h, step)`` returns ``H_step h``."""
    import torch

    h = v.clone()
    limit = 1e6 * (float(v.norm()) + 1e-12)
    for step in range(depth):
        h = v + (1.0 - damping) * h - hvp_at(h, step) / scale
        if not torch.isfinite(h).all() or float(h.norm()) > limit:
            raise FtpluginsError(
                f"LiSSA diverged at step {step + 1}/{depth} (|h| grew past 1e6 |v|): the Hessian has negative "
                f"curvature beyond damping * scale = {damping * scale:g} (an untrained surrogate?) or curvature "
                "above 2 * scale; "
                "raise select_influence_damping (or select_influence_scale) and rerun."
            )
    return h / scale


def per_row_scores(score_of: Callable[[list[int]], np.ndarray], start: int, stop: int) -> np.ndarray:
    """``[stop - start, 1]`` scores of rows ``start..stop``, one row per backward pass."""
    return np.asarray([score_of([i]) for i in range(start, stop)], dtype=np.float64).reshape(-1, 1)
