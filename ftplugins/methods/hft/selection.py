"""HFT's selection: which parameter tensors of each transformer layer train (Hui et al., arXiv:2404.18466).

Per layer (Llama naming), with a private seeded ``torch.Generator``:

* attention: 2 of {q_proj, k_proj, v_proj, o_proj} frozen, drawn uniformly;
* FFN: in a random half of the layers (``floor(L / 2)`` of them) 2 of {gate_proj, up_proj, down_proj}
  frozen, 1 in the others;
* norms: 1 of {input_layernorm, post_attention_layernorm} frozen.

A module's weight and bias (when it has one) follow the module. Everything outside these nine
modules trains: embeddings and lm_head (as the paper; the SSU re-implementation skips them "to follow
the original HFT paper") and the final norm (the paper's scheme does not cover it; unverified).

Accounting (module tensors, per category): every layer trains exactly 2 of its 4 attention modules
and 1 of its 2 norms; ``floor(L/2)`` layers train 1 of their 3 FFN modules and the other ``ceil(L/2)``
train 2, so over the stack exactly half of the FFN modules train when L is even (one more than half
when L is odd). Counts are of tensors, not of entries (q_proj and k_proj differ in size under GQA).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ftplugins.errors import UnsupportedModelError

ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
_PATTERN = re.compile(r"^(?P<layer>(?:.*\.)?layers\.\d+)\.(?P<module>" +
                      "|".join(re.escape(m) for m in ATTENTION + FFN + NORMS) + r")\.[^.]+$")


def layers_of(model: nn.Module) -> dict[str, dict[str, list[str]]]:
    """``{layer prefix: {module: [parameter names]}}`` of every complete Llama-style layer, in model order."""
    layers: dict[str, dict[str, list[str]]] = {}
    for name, _ in model.named_parameters():
        match = _PATTERN.match(name)
        if match:
            layers.setdefault(match["layer"], {}).setdefault(match["module"], []).append(name)
    complete = {k: v for k, v in layers.items() if all(m in v for m in ATTENTION + FFN + NORMS)}
    if not complete:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(
            f"hft found no Llama-style transformer layer in model type {model_type!r}: it looks for "
            f"'layers.N.' modules named {', '.join(ATTENTION + FFN + NORMS)} (all nine in each layer)."
        )
    return complete


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the draw for ``epoch`` (epoch 0 uses ``seed`` itself)."""
    return (int(seed) + 1_000_003 * int(epoch)) % (2**63)


def _pick(generator: torch.Generator, choices: tuple[str, ...], count: int) -> set[str]:
    order = torch.randperm(len(choices), generator=generator).tolist()
    return {choices[i] for i in order[:count]}


def select(model: nn.Module, seed: int) -> dict[str, bool]:
    """``{parameter name: trains}`` for every parameter of ``model``; HFT's frozen half drawn from ``seed``."""
    layers = layers_of(model)
    generator = torch.Generator().manual_seed(int(seed))
    names = list(layers)
    two_ffn = {names[i] for i in torch.randperm(len(names), generator=generator).tolist()[: len(names) // 2]}
    frozen: set[str] = set()
    for layer in names:  # model order, so the draw only depends on the seed and the layer count
        modules = layers[layer]
        chosen = _pick(generator, ATTENTION, 2)
        chosen |= _pick(generator, FFN, 2 if layer in two_ffn else 1)
        chosen |= _pick(generator, NORMS, 1)
        for module in chosen:
            frozen.update(modules[module])
    return {name: name not in frozen for name, _ in model.named_parameters()}
