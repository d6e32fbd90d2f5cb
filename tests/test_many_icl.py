"""ManyICL: many shots of one task per sequence, a loss on every answer, prompts masked."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.many_icl.packing import ROWS_COLUMN, TASK_COLUMN, pack_many_shot
from ftplugins.objectives.sft_tokens import TextFormat, tokenize_prompt_completion
from ftplugins.testing import arithmetic_dataset, arithmetic_example, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def fmt():
    tokenizer = tiny_tokenizer()
    return TextFormat(tokenizer=tokenizer, eos_token=tokenizer.eos_token)


def sft_args(tmp_path, **overrides):
    from trl import SFTConfig

    values = dict(max_length=128, per_device_train_batch_size=4)
    values.update(overrides)
    return cpu_args(SFTConfig, tmp_path, **values)


def multitask_dataset(n_per_task=12):
    """Three tasks of different lengths, grouped in the file (as real mixtures often are)."""
    from datasets import Dataset

    rng = random.Random(0)
    rows = []
    for task, terms in (("sum2", 2), ("sum3", 3), ("sum4", 4)):
        rows += [{**arithmetic_example(rng, terms=terms), "task": task} for _ in range(n_per_task)]
    return Dataset.from_list(rows)


def conversational(dataset):
    return dataset.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]})


def sft_row(fmt, example):
    ids, start = tokenize_prompt_completion(fmt, example)
    return ids, [-100] * start + ids[start:]


def spans(labels):
    """[start, end) of each run of labels != -100."""
    out, start = [], None
    for i, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = i
        elif label == -100 and start is not None:
            out.append((start, i))
            start = None
    return out


# k = 1 is plain SFT


def test_one_shot_rows_batches_and_training_equal_plain_sft(tmp_path):
    from trl import SFTTrainer

    data = arithmetic_dataset(16)
    plain = SFTTrainer(model=tiny_llama(), args=sft_args(tmp_path / "a", max_steps=2), train_dataset=data,
                       processing_class=tiny_tokenizer())
    one = ftplugins.compose(SFTTrainer, ["many_icl"], many_icl_shots=1, many_icl_shuffle=False)(
        model=tiny_llama(), args=sft_args(tmp_path / "b", max_steps=2), train_dataset=data,
        processing_class=tiny_tokenizer())
    assert one.train_dataset["input_ids"] == plain.train_dataset["input_ids"]
    assert one.train_dataset["labels"] == plain.train_dataset["labels"]
    assert all(len(rows) == 1 for rows in one.train_dataset[ROWS_COLUMN])
    features = [{k: plain.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(4)]
    a, b = plain.data_collator(features), one.data_collator(features)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    plain.train()
    one.train()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, one)]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    wa, wb = plain.model.state_dict(), one.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_one_shot_conversational_rows_equal_plain_sft(tmp_path):
    from trl import SFTTrainer

    data = conversational(arithmetic_dataset(8))
    plain = SFTTrainer(model=tiny_llama(), args=sft_args(tmp_path), train_dataset=data,
                       processing_class=tiny_tokenizer())
    one = ftplugins.compose(SFTTrainer, ["many_icl"], many_icl_shots=1)(
        model=tiny_llama(), args=sft_args(tmp_path), train_dataset=data, processing_class=tiny_tokenizer())
    expected = Counter(zip(map(tuple, plain.train_dataset["input_ids"]), map(tuple, plain.train_dataset["labels"])))
    got = Counter(zip(map(tuple, one.train_dataset["input_ids"]), map(tuple, one.train_dataset["labels"])))
    assert got == expected  # same rows, shuffled


# what a packed sequence is


def test_labels_are_exactly_the_union_of_answer_spans(fmt):
    data = arithmetic_dataset(40)
    packed = pack_many_shot(data, fmt, max_length=128)
    assert len(packed) < len(data) and max(len(r) for r in packed[ROWS_COLUMN]) > 2
    for ids, labels, rows in zip(packed["input_ids"], packed["labels"], packed[ROWS_COLUMN], strict=True):
        shots = [sft_row(fmt, data[i]) for i in rows]
        assert ids == [t for shot_ids, _ in shots for t in shot_ids]  # prompt, answer+EOS, prompt, ...
        assert labels == [t for _, shot_labels in shots for t in shot_labels]
        assert len(spans(labels)) == len(rows)  # one span per answer, prompts masked
        answers = [fmt.tokenizer.decode([t for t in ids[s:e]]) for s, e in spans(labels)]
        assert answers == [data[i]["completion"] + "</s>" for i in rows]


def test_last_answer_only_keeps_just_the_final_span(fmt):
    data = arithmetic_dataset(40)
    every = pack_many_shot(data, fmt, max_length=128)
    last = pack_many_shot(data, fmt, max_length=128, loss="last")
    assert every["input_ids"] == last["input_ids"] and every[ROWS_COLUMN] == last[ROWS_COLUMN]
    for all_labels, last_labels in zip(every["labels"], last["labels"], strict=True):
        start, end = spans(all_labels)[-1]
        assert spans(last_labels) == [(start, end)]
        assert last_labels[start:end] == all_labels[start:end]


def test_as_many_shots_as_fit_and_no_example_is_split(fmt):
    data = multitask_dataset()
    packed = pack_many_shot(data, fmt, max_length=96, task_column="task")
    used = [i for rows in packed[ROWS_COLUMN] for i in rows]
    assert sorted(used) == list(range(len(data)))  # every example exactly once...
    length = {i: len(sft_row(fmt, data[i])[0]) for i in range(len(data))}
    for ids, rows in zip(packed["input_ids"], packed[ROWS_COLUMN], strict=True):
        assert len(ids) == sum(length[i] for i in rows) <= 96  # ... whole, and within max_length
    # greedy and maximal: the first shot of a task's next sequence would not have fit in the previous one
    by_task = {}
    for rows, ids in zip(packed[ROWS_COLUMN], packed["input_ids"], strict=True):
        by_task.setdefault(data[rows[0]]["task"], []).append((rows, len(ids)))
    for sequences in by_task.values():
        order = [i for rows, _ in sorted(sequences, key=lambda s: used.index(s[0][0])) for i in rows]
        chained = sorted(sequences, key=lambda s: order.index(s[0][0]))
        for (rows, size), (following, _) in zip(chained, chained[1:]):
            assert size + length[following[0]] > 96


def test_tasks_never_share_a_sequence_and_alternate_across_sequences(fmt):
    data = multitask_dataset()
    packed = pack_many_shot(data, fmt, max_length=96, task_column="task")
    for task, rows in zip(packed[TASK_COLUMN], packed[ROWS_COLUMN], strict=True):
        assert {data[i]["task"] for i in rows} == {task}
    order = packed[TASK_COLUMN]
    assert set(order) == {"sum2", "sum3", "sum4"}
    assert order != sorted(order, key=["sum2", "sum3", "sum4"].index)  # shuffled, not grouped as in the file
    assert any(rows != sorted(rows) for rows in packed[ROWS_COLUMN])  # examples shuffled before packing, too
    unshuffled = pack_many_shot(data, fmt, max_length=96, task_column="task", shuffle=False)
    assert unshuffled[TASK_COLUMN] == sorted(unshuffled[TASK_COLUMN], key=["sum2", "sum3", "sum4"].index)
    assert [i for rows in unshuffled[ROWS_COLUMN] for i in rows] == list(range(len(data)))


def test_packing_is_deterministic_given_the_seed(fmt):
    data = multitask_dataset()

    def pack(seed, split="train"):
        return pack_many_shot(data, fmt, max_length=96, task_column="task", seed=seed, split=split).to_dict()

    assert pack(0) == pack(0)
    assert pack(0)[ROWS_COLUMN] != pack(1)[ROWS_COLUMN]
    assert pack(0)[ROWS_COLUMN] != pack(0, "eval")[ROWS_COLUMN]


def test_fixed_shot_count(fmt):
    data = arithmetic_dataset(20)
    packed = pack_many_shot(data, fmt, max_length=1024, shots=3, shuffle=False)
    assert [len(rows) for rows in packed[ROWS_COLUMN]] == [3] * 6 + [2]
    tight = pack_many_shot(data, fmt, max_length=64, shots=3)  # three do not fit in 64 tokens: fewer
    assert max(len(rows) for rows in tight[ROWS_COLUMN]) < 3


def test_a_bos_the_tokenizer_prepends_is_kept_once_per_sequence():
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fmt = TextFormat(tokenizer=tokenizer, eos_token=tokenizer.eos_token)
    data = arithmetic_dataset(12)
    single = pack_many_shot(data, fmt, max_length=128, shots=1, shuffle=False)
    assert single["input_ids"] == [sft_row(fmt, data[i])[0] for i in range(12)]  # SFT rows start with BOS
    packed = pack_many_shot(data, fmt, max_length=128, shuffle=False)
    for ids, labels, rows in zip(packed["input_ids"], packed["labels"], packed[ROWS_COLUMN], strict=True):
        assert len(rows) > 1 and ids[0] == bos and ids.count(bos) == 1
        assert ids == [bos] + [t for i in rows for t in sft_row(fmt, data[i])[0][1:]]
        assert [t for t in labels if t != -100] == [t for i in rows for t in sft_row(fmt, data[i])[1] if t != -100]


def test_conversational_shots_form_one_conversation_with_assistant_turns_as_labels(fmt):
    data = conversational(arithmetic_dataset(12))
    packed = pack_many_shot(data, fmt, max_length=128)
    tokenizer = fmt.tokenizer
    for ids, labels, rows in zip(packed["input_ids"], packed["labels"], packed[ROWS_COLUMN], strict=True):
        messages = [m for i in rows for m in data[i]["prompt"] + data[i]["completion"]]
        rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
        assert ids == rendered["input_ids"]
        # the template's own {% generation %} markers are an independent oracle for the answer spans: they
        # cover each assistant turn including its "A:" generation prompt, which TRL counts as prompt
        turns = spans([1 if m else -100 for m in rendered["assistant_masks"]])
        assert len(turns) == len(spans(labels)) == len(rows)
        for (start, end), (label_start, label_end) in zip(turns, spans(labels), strict=True):
            assert label_end == end and tokenizer.decode(ids[start:label_start]).strip() == "A:"
        assert tokenizer.decode(ids).count("Q: ") == len(rows) > 1


def test_system_messages_of_later_shots_are_dropped(fmt):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "system", "content": "Add."}, {"role": "user", "content": f"{i}+1=?"}],
             "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(3)]
    packed = pack_many_shot(Dataset.from_list(rows), fmt, max_length=128, shuffle=False)
    assert len(packed) == 1
    text = fmt.tokenizer.decode(packed["input_ids"][0])
    assert text == "Add.\nQ: 0+1=?\nA: 1</s>Q: 1+1=?\nA: 2</s>Q: 2+1=?\nA: 3</s>"


def test_an_example_longer_than_max_length_is_truncated_alone(fmt):
    from datasets import Dataset

    data = Dataset.from_list([{"prompt": "1+1=?", "completion": "2."},
                              {"prompt": "1+1=?", "completion": " ".join(["2"] * 40)},
                              {"prompt": "1+" * 30 + "1=?", "completion": "31."},
                              {"prompt": "2+2=?", "completion": "4."}])
    packed = pack_many_shot(data, fmt, max_length=12, shuffle=False)
    assert packed[ROWS_COLUMN] == [[0], [1], [3]]  # row 2: its prompt alone fills max_length: no answer left
    assert all(len(ids) <= 12 for ids in packed["input_ids"])
    ids, start = tokenize_prompt_completion(fmt, data[1])
    assert packed["input_ids"][1] == ids[:12] and packed["labels"][1] == [-100] * start + ids[start:12]


# through the trainer


def test_many_shot_training_run_through_compose(tmp_path):
    from trl import SFTTrainer

    trainer = ftplugins.compose(SFTTrainer, ["many_icl"], many_icl_task_column="task")(
        model=tiny_llama(), args=sft_args(tmp_path, max_length=96, max_steps=2),
        train_dataset=multitask_dataset(), eval_dataset=multitask_dataset(4), processing_class=tiny_tokenizer())
    assert set(trainer.train_dataset.column_names) >= {"input_ids", "labels", TASK_COLUMN}
    assert max(len(rows) for rows in trainer.train_dataset[ROWS_COLUMN]) > 2
    assert max(len(rows) for rows in trainer.eval_dataset[ROWS_COLUMN]) > 1  # eval sets are packed too
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))


# user errors


@pytest.mark.parametrize("options", [{"many_icl_shots": -1}, {"many_icl_loss": "first"}, {"many_icl_shot": 3}])
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["many_icl"], **options)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"packing": True}, "packing=False"), ({"completion_only_loss": False}, "completion_only_loss"),
     ({"max_length": None}, "max_length")],
)
def test_conflicting_arguments_are_refused(tmp_path, overrides, message):
    from trl import SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["many_icl"])
    with pytest.raises(FtpluginsError, match=message):
        cls(model=tiny_llama(), args=sft_args(tmp_path, **overrides), train_dataset=arithmetic_dataset(4),
            processing_class=tiny_tokenizer())


def test_datasets_it_cannot_pack_are_refused(fmt):
    from datasets import Dataset

    with pytest.raises(DatasetColumnsError, match="prompt/completion"):
        pack_many_shot(Dataset.from_list([{"text": "1+1=2"}]), fmt, max_length=64)
    with pytest.raises(DatasetColumnsError, match="many_icl_task_column='kind'"):
        pack_many_shot(arithmetic_dataset(4), fmt, max_length=64, task_column="kind")


def test_plugin_module_does_not_import_torch():
    code = "import sys, ftplugins.methods.many_icl as m; assert 'torch' not in sys.modules; print(m.plugin.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "many_icl"
