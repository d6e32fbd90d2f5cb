"""Packed pre-training rows (benchmarks/quality/packing.py): every example once, and each gets exactly the logits it
would get alone, so packing changes the cost of a step, not what the model learns from an example."""

from collections import Counter
from dataclasses import replace

import pytest
import torch

from benchmarks.quality import corpus, packing, pretrain, tasks
from benchmarks.quality.__main__ import MID, SMOKE
from ftplugins.errors import FtpluginsError


def rows(n: int, seed: int = 0):
    return tasks.examples(list(MID.tasks), n, seed=seed)


def test_pack_keeps_every_example_once_within_max_length():
    data = rows(200)
    tokenizer = corpus.char_tokenizer(r["prompt"] + r["completion"] for r in data)
    packed = packing.pack(data, tokenizer, 96)
    assert packed == packing.pack(data, tokenizer, 96)  # deterministic
    assert sum(len(r["seq_lengths"]) for r in packed) == len(data)
    assert all(len(r["input_ids"]) == len(r["labels"]) == sum(r["seq_lengths"]) <= 96 for r in packed)
    assert len(packed) < len(data) / 2  # mid's examples average ~35 characters: 2-3 per row
    singles = sorted(tuple(ids) for ids, _ in (packing.tokenized(r, tokenizer) for r in data))
    pieces = []
    for row in packed:
        start = 0
        for n in row["seq_lengths"]:
            pieces.append(tuple(row["input_ids"][start:start + n]))
            assert row["input_ids"][start + n - 1] == tokenizer.eos_token_id
            start += n
    assert sorted(pieces) == singles  # the same examples, each whole
    ids, labels = packing.tokenized(data[0], tokenizer)
    prompt_len = len(data[0]["prompt"])
    assert labels[:prompt_len] == [-100] * prompt_len and labels[prompt_len:] == ids[prompt_len:]
    with pytest.raises(ValueError, match="raise max_length"):
        packing.pack(data, tokenizer, 20)


def test_each_packed_example_gets_the_logits_it_gets_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    data = rows(24, seed=3)
    tokenizer = corpus.char_tokenizer(r["prompt"] + r["completion"] for r in rows(2000))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)).eval()
    model.config.use_cache = False
    packed = packing.pack(data, tokenizer, 96)
    batch = packing.PackedCollator(tokenizer.pad_token_id)(packed[:4])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        compared = 0
        for r, row in enumerate(packed[:4]):
            start = 0
            for n in row["seq_lengths"]:
                alone = model(input_ids=torch.tensor([row["input_ids"][start:start + n]])).logits[0]
                torch.testing.assert_close(logits[r, start:start + n], alone, atol=1e-5, rtol=1e-4)
                start, compared = start + n, compared + 1
    assert compared > 4  # rows really held several examples


def test_a_packed_build_trains_and_is_keyed_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("FTPLUGINS_BENCH_CACHE", str(tmp_path))
    plain = replace(SMOKE[0], tasks=MID.tasks, max_length=96, max_position_embeddings=128, examples=256)
    packed = replace(plain, pack=True, eval_every=5)
    assert "pack" not in plain.recipe()["config"] and packed.recipe()["packing_source"]
    assert packed.key() != plain.key()
    seen = []
    collate = packing.PackedCollator.__call__
    monkeypatch.setattr(packing.PackedCollator, "__call__", lambda self, rows: seen.append(collate(self, rows))
                        or seen[-1])
    lines = []
    folder, record = pretrain.pretrained(packed, log=lines.append)
    train_batches = [b for b in seen if b["input_ids"].shape[0] == packed.batch_size]
    assert train_batches and all("attention_mask" not in b for b in train_batches)
    # TRL kept the rows' seq_lengths: positions restart inside rows (several examples attend apart)
    assert any(((b["position_ids"][:, 1:-1] == 0) & (b["position_ids"][:, 2:] == 1)).any() for b in train_batches)
    assert any("packed 256 examples into" in line for line in lines)
    assert all(loss == loss and loss > 0 for loss in record["loss_curve"])  # finite, positive
    assert set(record["accuracy"]) == set(MID.tasks)
    # the held-out rows are unpacked and scored on their completions only (their prompts are labelled -100)
    eval_batches = [b for b in seen if "attention_mask" in b]
    assert eval_batches and all((b["labels"][:, 0] == -100).all() for b in eval_batches)
    assert record["heldout_curve"] and record["heldout_curve"][0]["eval_loss"] > 0


def test_unpacked_rows_keep_their_attention_mask():
    """The held-out curve's rows go through the same collator unpacked: they keep TRL's padding mask."""
    batch = packing.PackedCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                       {"input_ids": [5, 6], "labels": [-100, 6]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_task_weights_set_each_tasks_share_and_enter_the_key():
    weighted = replace(SMOKE[0], tasks=("copy", "add_steps"), task_weights=(3, 1), examples=400)
    assert pretrain.task_cycle(weighted) == ["copy", "copy", "copy", "add_steps"]
    assert weighted.key() != replace(weighted, task_weights=()).key()
    assert "task_weights" not in replace(weighted, task_weights=()).recipe()["config"]  # older keys unchanged
    shares = Counter(r["task"] for r in tasks.examples(pretrain.task_cycle(weighted), 400, seed=0))
    assert shares == {"copy": 300, "add_steps": 100}
    with pytest.raises(FtpluginsError, match="one positive integer per task"):
        pretrain.task_cycle(replace(weighted, task_weights=(3,)))
