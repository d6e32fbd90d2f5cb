"""`ftplugins.sparse.targets`: the one target scan of LIFT, SaRA and grafting."""

from __future__ import annotations

from torch import nn

from ftplugins.sparse.targets import target_weights
from ftplugins.testing import tiny_llama


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(4, 4, 3)
        self.proj = nn.Linear(4, 4)
        self.again = self.proj  # the same module twice: listed once
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


def test_embeddings_and_head_never_targets_even_when_tied():
    for tied in (False, True):
        model = tiny_llama(tie_word_embeddings=tied)
        linear = target_weights(model, (nn.Linear,), ndim=2)
        assert linear and all(name.endswith("_proj.weight") for name in linear)
        assert target_weights(model, ndim=2) == linear  # every 2-D parameter of a Llama is a Linear's
        assert not {"model.embed_tokens.weight", "lm_head.weight"} & set(target_weights(model))


def test_layer_types_and_dimensions_choose_the_candidates():
    model = ConvNet()
    assert target_weights(model, (nn.Linear, nn.Conv2d)) == ["conv.weight", "proj.weight"]
    assert target_weights(model, (nn.Linear, nn.Conv2d), ndim=2) == ["proj.weight"]
    every = target_weights(model)
    assert "norm.weight" in every and "proj.bias" in every and "head.weight" not in every and "embed.weight" not in every
