"""The tiny pre-trained base: it knows the format and the additions but not the quick start's task, and
``ftplugins tiny-model`` writes it for the recipes (``--random`` keeps the random one for fixtures)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from ftplugins.cli import main as cli
from ftplugins.quickstart import answer_accuracy
from ftplugins.testing import arithmetic_dataset
from ftplugins.tiny_base import tiny_base


def test_the_base_does_two_and_four_number_sums_but_not_the_quick_starts_three():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_base()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    accuracy = {terms: answer_accuracy(model, tokenizer, list(arithmetic_dataset(32, seed=7, terms=terms)))[0]
                for terms in (2, 3)}
    assert accuracy[2] >= 0.8 and accuracy[3] <= 0.4, accuracy


def test_tiny_model_writes_the_pretrained_base_and_random_weights_on_request(tmp_path):
    cli(["tiny-model", str(tmp_path / "base")])
    cli(["tiny-model", "--random", str(tmp_path / "random")])
    cached = load_file(os.path.join(tiny_base(), "model.safetensors"))
    written = load_file(str(tmp_path / "base" / "model.safetensors"))
    assert all(torch.equal(cached[k], written[k]) for k in cached)
    assert (tmp_path / "base" / "tokenizer.json").exists() and not (tmp_path / "base" / "tiny-base.json").exists()
    assert (tmp_path / "random" / "config.json").exists()
    random = load_file(str(tmp_path / "random" / "model.safetensors"))
    assert any(v.shape != cached[k].shape or not torch.equal(v, cached[k]) for k, v in random.items())
