"""masked_thought refuses rows without a prompt/response boundary instead of masking the prompt too."""

from __future__ import annotations

import pytest
from conftest import cpu_args
from datasets import Dataset

import ftplugins
from ftplugins.errors import DatasetColumnsError
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer



def build(tmp_path, dataset, **args):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["masked_thought"], masked_thought_ratio=0.4)
    return cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, max_length=64, **args), train_dataset=dataset,
               processing_class=tiny_tokenizer())


def rows(n=4):
    return arithmetic_dataset(n).to_list()


def test_text_rows_are_refused_with_the_fix(tmp_path):
    text = Dataset.from_list([{"text": f"{r['prompt']} {r['completion']}"} for r in rows()])
    with pytest.raises(DatasetColumnsError, match=r"columns: .*text.*the prompt would be masked too. Give "
                                                  r"prompt/completion rows"):
        build(tmp_path, text)


def test_prompt_completion_with_loss_on_the_prompt_is_refused(tmp_path):
    with pytest.raises(DatasetColumnsError, match="completion_only_loss"):
        build(tmp_path, arithmetic_dataset(4), completion_only_loss=False)


def test_messages_without_assistant_only_loss_are_refused_and_with_it_train(tmp_path):
    chats = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["completion"]}]} for r in rows()])
    with pytest.raises(DatasetColumnsError, match="assistant_only_loss=true"):
        build(tmp_path / "a", chats)
    trainer = build(tmp_path / "b", chats, assistant_only_loss=True)
    trainer.train()
    assert trainer.state.global_step == 2


def test_prompt_completion_rows_train(tmp_path):
    trainer = build(tmp_path, arithmetic_dataset(4))
    trainer.train()
    assert trainer.state.global_step == 2
