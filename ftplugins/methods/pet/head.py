"""The PET head: the MLM head restricted to the verbaliser tokens, and the label scores it gives.

s(l|x) = sum_i logit_i(v_i(l)) over the m mask positions, q = softmax over the labels only, loss = CE(q, y). The head
is a copy of the masked LM's own prediction transform plus the output-embedding rows (and biases) of the verbaliser
tokens: a copy, because the decoder is tied to the input embeddings, which must stay unchanged (the PLM is frozen).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ftplugins.errors import UnsupportedModelError

from .verbalizer import Verbalizer


def masked_lm(model: Any) -> Any:
    """The ``*ForMaskedLM`` under a PEFT wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prediction_transform(mlm: Any) -> nn.Module:
    """The dense + activation + LayerNorm before the decoder (BERT family: ``cls.predictions.transform``)."""
    transform = getattr(getattr(getattr(mlm, "cls", None), "predictions", None), "transform", None)
    if transform is None:
        raise UnsupportedModelError(
            f"pet: {type(mlm).__name__} (model_type {getattr(mlm.config, 'model_type', '?')!r}) has no BERT-style MLM "
            "head (cls.predictions.transform); PET here supports BERT-family masked LMs (AutoModelForMaskedLM of "
            "BERT / MiniLM)."
        )
    return transform


class PetHead(nn.Module):
    def __init__(self, mlm: Any, verbalizer: Verbalizer):
        super().__init__()
        self.transform = copy.deepcopy(prediction_transform(mlm))
        ids = torch.tensor(verbalizer.token_ids)  # [labels, m]
        vocab, where = torch.unique(ids, return_inverse=True)
        decoder = mlm.get_output_embeddings()
        self.weight = nn.Parameter(decoder.weight.detach()[vocab].clone())
        bias = decoder.bias if decoder.bias is not None else torch.zeros(decoder.weight.shape[0])
        self.bias = nn.Parameter(bias.detach()[vocab].clone())
        self.register_buffer("choice", where, persistent=True)  # [labels, m] -> row of self.weight
        for p in self.parameters():
            p.requires_grad_(True)

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, m, hidden] at the masks -> [batch, m, verbaliser vocabulary] logits."""
        return self.transform(hidden) @ self.weight.T + self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, m, hidden] -> label scores [batch, labels]: each label's token logits summed over the masks."""
        logits = self.token_logits(hidden)
        m = self.choice.shape[1]
        positions = torch.arange(m, device=logits.device)
        per_label = logits[:, positions, self.choice]  # [batch, labels, m]
        return per_label.sum(dim=-1)


def attach_head(model: Any, verbalizer: Verbalizer) -> Any:
    """``model`` (a masked LM, PEFT-wrapped or not) with its PET head as ``model.pet_head``, on the model's device:
    what training adds and what :func:`ftplugins.methods.pet.predict.predict_proba` reads."""
    head = PetHead(masked_lm(model), verbalizer).to(next(model.parameters()).device)
    model.add_module("pet_head", head)
    return model


def mask_hidden(model: Any, inputs: dict[str, torch.Tensor], mask_token_id: int, masks: int) -> torch.Tensor:
    """The encoder's last hidden states at the m mask positions of each row: [batch, m, hidden]."""
    mlm = masked_lm(model)
    encoder = getattr(mlm, mlm.base_model_prefix)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    hidden = encoder(**{k: inputs[k] for k in keys if k in inputs}).last_hidden_state
    at = inputs["input_ids"] == mask_token_id
    return hidden[at].view(hidden.shape[0], masks, hidden.shape[-1])


def label_scores(model: Any, head: PetHead, inputs: dict[str, torch.Tensor], mask_token_id: int) -> torch.Tensor:
    return head(mask_hidden(model, inputs, mask_token_id, head.choice.shape[1]))
