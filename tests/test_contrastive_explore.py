"""Iterative CGE inside a run (plugin contrastive_explore): the pool grows by contrastive samples of the base."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ftplugins import hookimpl
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer
from ftplugins.tools import cge_pool
from ftplugins.tools.cge_pool_plugin import POOL_FILE, plugin
from ftplugins.tools.contrastive import AdapterDisabled, contrastive_generate_ids


class BatchRecorder(Plugin):
    """Records the input ids of every example the collator is given (test only)."""

    name = "batch_recorder"
    summary = "records collated examples"

    def __init__(self):
        self.seen = []

    @hookimpl
    def data_collator(self, run, collator):
        def collate(examples):
            self.seen += [list(e["input_ids"]) for e in examples]
            return collator(examples)

        return collate


def train(tmp_path, peft_config=None, rows=4, max_steps=5, extra=(), **options):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins

    options = {"contrastive_explore_samples": 4, "contrastive_explore_max_new_tokens": 6, **options}
    cls = ftplugins.compose(SFTTrainer, [plugin, *extra], **options)
    trainer = cls(model=tiny_llama(seed=0), args=cpu_args(SFTConfig, tmp_path, max_steps=max_steps,
                                                          learning_rate=5e-2),
                  train_dataset=arithmetic_dataset(rows), processing_class=tiny_tokenizer(), peft_config=peft_config)
    trainer.train()
    return trainer


def test_a_lora_run_adds_the_contrastive_samples_of_its_adapter_disabled_base_to_the_pool(tmp_path, monkeypatch):
    from peft import LoraConfig

    bases = []

    def spy(model, tokenizer, prompts, base_model=None, **kwargs):
        bases.append((model, base_model))
        return contrastive_generate_ids(model, tokenizer, prompts, base_model, **kwargs)

    monkeypatch.setattr(cge_pool, "contrastive_generate_ids", spy)
    recorder = BatchRecorder()
    trainer = train(tmp_path, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), rows=2, max_steps=4,
                    extra=[recorder], contrastive_explore_samples=8)
    state = trainer._ftplugins_run.state["contrastive_explore"]
    # One step per epoch (2 rows, batch 2): a round at the end of each, 8 samples each.
    assert [s["step"] for s in state["samples"]] == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8
    assert len(trainer.train_dataset) == 2 + 32 and len(state["pool"].extra) == 32
    generated = [s["input_ids"] for s in state["samples"]]
    assert any(ids in generated for ids in recorder.seen[2:])  # later epochs draw from the grown pool
    assert bases and all(isinstance(base, AdapterDisabled) and base.peft_model is model for model, base in bases)

    # The last round ran on the final model: the same seed regenerates its samples with the adapter-disabled base.
    model, tokenizer = trainer.model, trainer.processing_class
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trainer.args.seed * 1_000_003 + 4)
        again = contrastive_generate_ids(model, tokenizer, [tokenizer.bos_token] * 8, AdapterDisabled(model),
                                         max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    start = tokenizer(tokenizer.bos_token)["input_ids"]
    assert [start + [t for t in ids if t != tokenizer.pad_token_id] for ids in again] == generated[24:]
    written = [json.loads(line) for line in open(os.path.join(tmp_path, POOL_FILE))]
    assert written == state["samples"]


def test_full_fine_tuning_contrasts_with_a_frozen_copy_of_the_initial_weights(tmp_path):
    trainer = train(tmp_path, max_steps=3, contrastive_explore_every=3, contrastive_explore_samples=2)
    state = trainer._ftplugins_run.state["contrastive_explore"]
    initial = tiny_llama(seed=0).state_dict()
    base = state["base"].state_dict()
    assert all(torch.equal(base[k], initial[k]) for k in initial)
    assert not all(torch.equal(trainer.model.state_dict()[k], initial[k]) for k in initial)
    assert len(state["samples"]) == 2 and len(trainer.train_dataset) == 6


def test_a_resumed_run_starts_from_the_rows_generated_up_to_its_checkpoint(tmp_path):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins

    cls = ftplugins.compose(SFTTrainer, [plugin], contrastive_explore_every=1, contrastive_explore_samples=1,
                            contrastive_explore_max_new_tokens=4)
    args = cpu_args(SFTConfig, tmp_path, max_steps=4, learning_rate=5e-2, save_strategy="steps", save_steps=2)
    first = cls(model=tiny_llama(seed=0), args=args, train_dataset=arithmetic_dataset(4),
                processing_class=tiny_tokenizer())
    first.train()
    samples = first._ftplugins_run.state["contrastive_explore"]["samples"]
    assert [s["step"] for s in samples] == [1, 2, 3, 4]
    second = cls(model=tiny_llama(seed=0), args=args, train_dataset=arithmetic_dataset(4),
                 processing_class=tiny_tokenizer())
    cge_pool.start_pool(second._ftplugins_run, second, None, os.path.join(tmp_path, "checkpoint-2"))
    resumed = second._ftplugins_run.state["contrastive_explore"]
    assert resumed["samples"] == samples[:2] and len(second.train_dataset) == 4 + 2
    assert second.train_dataset[4]["input_ids"] == samples[0]["input_ids"]


def test_options_are_checked_and_ddp_is_refused():
    import ftplugins
    from trl import SFTTrainer

    with pytest.raises(FtpluginsError, match="contrastive_explore_alpha"):
        ftplugins.compose(SFTTrainer, [plugin], contrastive_explore_alpha=2.0)
    with pytest.raises(FtpluginsError, match="contrastive_explore_samples"):
        ftplugins.compose(SFTTrainer, [plugin], contrastive_explore_samples=0)
    assert "ddp" not in plugin.distributed and "differ" in plugin.distributed_refusals["ddp"]
