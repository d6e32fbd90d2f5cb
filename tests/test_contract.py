"""The plugin contract: every hook fires exactly once per run, in the documented order."""

from __future__ import annotations

import pytest
from conftest import ALL_HOOKS, cpu_args

import ftplugins
from ftplugins import hookspecs
from ftplugins.testing import arithmetic_dataset, preference_dataset, prompt_dataset, tiny_llama, tiny_tokenizer

DOCUMENTED_ORDER = [
    "trainer_mixins",
    "validate",
    "patch_before_model_load",
    "model_init_kwargs",
    "peft_config",
    "transform_dataset",
    "reward_funcs",
    "callbacks",
    "prepare_model",
    "data_collator",
    "create_optimizer",
    "post_train",
]


def test_hookspec_order_is_the_documented_order():
    assert hookspecs.ORDER == DOCUMENTED_ORDER
    for hook in DOCUMENTED_ORDER:
        assert f"{hook}``" in hookspecs.__doc__ or f"``{hook}``" in hookspecs.__doc__


def constant_reward(completions, **kwargs):
    return [1.0 for _ in completions]


def build(kind, recorder, tmp_path):
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    tok = tiny_tokenizer()
    if kind == "sft":
        cls = ftplugins.compose(SFTTrainer, [recorder])
        return cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(8),
                   processing_class=tok)
    if kind == "dpo":
        cls = ftplugins.compose(DPOTrainer, [recorder])
        return cls(model=tiny_llama(), ref_model=tiny_llama(), args=cpu_args(DPOConfig, tmp_path, max_length=64),
                   train_dataset=preference_dataset(8), processing_class=tok)
    cls = ftplugins.compose(GRPOTrainer, [recorder])
    args = cpu_args(GRPOConfig, tmp_path, num_generations=2, max_completion_length=4, per_device_train_batch_size=2)
    return cls(model=tiny_llama(), reward_funcs=[constant_reward], args=args, train_dataset=prompt_dataset(4),
               processing_class=tok)


@pytest.mark.parametrize("kind", ["sft", "dpo", "grpo"])
def test_every_hook_fires_once_in_order(kind, recorder, tmp_path):
    trainer = build(kind, recorder, tmp_path)
    trainer.train()
    assert recorder.calls == DOCUMENTED_ORDER
    assert sorted(recorder.calls) == sorted(ALL_HOOKS)
    assert trainer.ftplugins_run.plugins == [recorder]


def test_plugins_are_called_in_the_users_order(tmp_path):
    from conftest import RecordingPlugin
    from trl import SFTConfig, SFTTrainer

    seen = []

    class First(RecordingPlugin):
        name = "first"

        def _rec(self, hook, **info):
            seen.append((hook, self.name))

    class Second(First):
        name = "second"

    cls = ftplugins.compose(SFTTrainer, [First(), Second()])
    cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
        processing_class=tiny_tokenizer())
    validate = [name for hook, name in seen if hook == "validate"]
    assert validate == ["first", "second"]


def test_trace_logs_each_hook_call(recorder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTPLUGINS_TRACE", "1")
    build("sft", recorder, tmp_path)
    err = capsys.readouterr().err
    for hook in DOCUMENTED_ORDER[:10]:
        assert f"[ftplugins] {hook} -> recorder" in err
