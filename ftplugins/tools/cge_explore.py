"""Iterative contrastive generative exploration: generate one example, pull the base model towards it, repeat.

lgduu/cge (main.py, model_distill.py): each step decodes one sequence from the fine-tuned model contrasted with
the current base model (unconditionally from BOS by default; the reference uses beam sampling, ``num_beams=4,
do_sample=True``, up to 256 tokens), then takes **one** causal-LM (NLL) gradient step on the base model with that
sequence (AdamW, lr 5e-5, constant). The updated base then discounts what was just generated, pushing later
samples towards other domains the fine-tuning data covered. ``update=False`` is the static variant (the reference's
``--no_update``): the same contrast every step.

Only the base model is trained; the fine-tuned model is never changed. The base must be a model of its own (not the
adapter-disabled view of a PEFT fine-tune, whose base weights the fine-tuned model shares): pass a separate copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

from .contrastive import AdapterDisabled, ContrastiveLogitsProcessor


def explore(model: Any, tokenizer: Any, base_model: Any, *, steps: int = 100, update: bool = True,
            learning_rate: float = 5e-5, prompt: str = "", alpha: float = 0.1, gamma: float = 1.0,
            max_new_tokens: int = 256, num_beams: int = 4, do_sample: bool = True, seed: int | None = 0,
            on_sample: Callable[[int, str], None] | None = None) -> list[str]:
    """``steps`` contrastive samples (prompt + continuation text, special tokens skipped), updating ``base_model``
    by one NLL step after each when ``update``. ``on_sample(step, text)`` sees each sample as it is made."""
    if isinstance(base_model, AdapterDisabled) or base_model is None or base_model is model:
        raise FtpluginsError(
            "cge explore: the base model is trained between samples, so it must be a separate model; the "
            "adapter-disabled view of a PEFT fine-tune shares its base weights with the fine-tuned model. Load "
            "the base on its own: AutoModelForCausalLM.from_pretrained(BASE_DIR).")
    if steps < 1 or not learning_rate > 0:
        raise FtpluginsError(f"cge explore: steps={steps}, learning_rate={learning_rate}; expected steps >= 1 and "
                             "a positive learning rate.")
    if seed is not None:
        torch.manual_seed(seed)
    start = list(tokenizer(prompt)["input_ids"]) if prompt else []
    if not start or (tokenizer.bos_token_id is not None and start[0] != tokenizer.bos_token_id):
        if tokenizer.bos_token_id is None:
            raise FtpluginsError("cge explore: the tokenizer has no BOS token to start from; pass a prompt.")
        start = [tokenizer.bos_token_id] + start
    device = next(model.parameters()).device
    input_ids = torch.tensor([start], device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW([p for p in base_model.parameters() if p.requires_grad], lr=learning_rate)
    model.eval()
    samples = []
    for step in range(steps):
        base_model.eval()
        processor = ContrastiveLogitsProcessor(base_model, alpha, gamma)
        sampling = {} if do_sample else {"temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=max_new_tokens, logits_processor=[processor], num_beams=num_beams,
                                 do_sample=do_sample, pad_token_id=pad_id, **sampling)
        sequence = out[0][out[0] != pad_id] if pad_id not in start else out[0]
        text = tokenizer.decode(sequence, skip_special_tokens=True)
        samples.append(text)
        if on_sample is not None:
            on_sample(step, text)
        if update and sequence.numel() > 1:
            nll_step(base_model, optimizer, sequence.unsqueeze(0))
    base_model.eval()
    return samples


def nll_step(model: Any, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor) -> float:
    """One causal-LM gradient step of ``model`` on ``input_ids``; returns the loss before the step."""
    model.train()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
