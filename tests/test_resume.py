"""Interrupted and resumed runs end exactly where uninterrupted ones do, plugin state included;
saves are atomic."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer


def train(output_dir, plugins, options, stop_at=None, resume=False):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, plugins, **options)
    args = cpu_args(SFTConfig, output_dir, max_steps=6, save_strategy="steps", save_steps=3, learning_rate=3e-2,
                    per_device_train_batch_size=4)
    trainer = cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(48), processing_class=tiny_tokenizer(),
                  callbacks=[StopAt(stop_at)] if stop_at else None)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.initial_weights = initial
    return trainer, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize(
    "plugins,options",
    [
        (["masked_thought"], {"masked_thought_ratio": 0.4, "masked_thought_warmup": 0.5}),
        (["masked_thought", "ssf"], {"masked_thought_ratio": 0.3, "masked_thought_warmup": 1.0}),
    ],
    ids=["masked_thought", "masked_thought+ssf"],
)
def test_resume_matches_uninterrupted(tmp_path, plugins, options):
    first, straight = train(tmp_path / "straight", plugins, options)
    stopped, _ = train(tmp_path / "resumed", plugins, options, stop_at=3)
    assert stopped.state.global_step == 3
    assert os.path.isdir(tmp_path / "resumed" / "checkpoint-3")
    resumed, weights = train(tmp_path / "resumed", plugins, options, resume=True)
    assert resumed.state.global_step == 6
    assert straight.keys() == weights.keys()
    changed = [n for n in straight if not torch.equal(straight[n], first.initial_weights[n])]
    assert changed, "the runs did not train"
    for name in straight:
        torch.testing.assert_close(weights[name], straight[name], rtol=0, atol=1e-6, msg=name)


def test_a_crash_during_save_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["ssf"])
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path / "run"), train_dataset=arithmetic_dataset(8),
                  processing_class=tiny_tokenizer())
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    first = (out / "adapter_model.safetensors").read_bytes()
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "ssf_" in name:
                param.add_(1.0)

    import peft.peft_model

    real_save = peft.peft_model.safe_save_file  # PEFT saves adapters through this name

    def crash_halfway(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as handle:  # a torn write...
            handle.truncate(16)
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").read_bytes() == first
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], "temporary folder left behind"
    monkeypatch.setattr(peft.peft_model, "safe_save_file", real_save)
    trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").read_bytes() != first
