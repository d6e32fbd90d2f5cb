"""The `mid` decoder of the quality harness: its tokenizers (character-level, and the BPE option), its cache key, and a
shrunk build a scenario runs on."""

import json
import os
import shutil
from dataclasses import replace

from benchmarks.quality import bpe, corpus, pretrain, tasks
from benchmarks.quality.__main__ import MID, SIZES, smoke_of


def mid_texts(n: int) -> list[str]:
    return [r["prompt"] + r["completion"] for r in tasks.examples(list(MID.tasks), n, seed=0)]


def test_mid_char_tokenizer_extends_small_ids_and_round_trips():
    texts = mid_texts(2000)
    small = tasks.char_tokenizer()
    mid = corpus.char_tokenizer(texts)
    assert len(mid) > len(small)
    assert {k: v for k, v in mid.get_vocab().items() if v < len(small)} == small.get_vocab()  # small's ids kept
    assert corpus.char_tokenizer(["abc+1=2"]).get_vocab() == small.get_vocab()  # nothing new: small's tokenizer
    assert " " in mid.get_vocab() and "A" in mid.get_vocab()
    for row in tasks.examples(list(MID.tasks), 300, seed=5):
        text = row["prompt"] + row["completion"]
        ids = mid(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and mid.unk_token_id not in ids  # one id per character, none unknown
        assert mid.decode(ids) == text  # exact-match scoring needs the exact text (spaces before "." kept)
        assert len(ids) + 1 <= MID.max_length  # with EOS, nothing is truncated
        assert len(row["completion"]) <= tasks.TASKS[row["task"]].max_new_tokens  # the budget fits the answer


def test_bpe_tokenizer_is_deterministic_and_round_trips():
    texts = mid_texts(600)
    first, second = bpe.train_bpe(texts, 400), bpe.train_bpe(texts, 400)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()  # same merges, same ids
    assert len(first) == 400 and first.convert_ids_to_tokens(list(range(5))) == tasks.SPECIAL_TOKENS
    other = bpe.train_bpe(mid_texts(300), 400)
    assert other.backend_tokenizer.to_str() != first.backend_tokenizer.to_str()  # the texts do matter
    for row in tasks.examples(list(MID.tasks), 60, seed=5):
        prompt = first(row["prompt"], add_special_tokens=False)["input_ids"]
        whole = first(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
        assert whole[: len(prompt)] == prompt  # the completion starts at a token boundary (TRL's prompt mask)
        assert first.decode(whole) == row["prompt"] + row["completion"]  # exact match scoring needs exact text
        assert len(whole) <= len(row["prompt"] + row["completion"])  # tasks' character budgets bound tokens


def test_mid_key_follows_the_corpus_source_and_small_key_does_not(monkeypatch, tmp_path):
    small_key, mid_key = SIZES["small"].key(), MID.key()
    assert "corpus_source" not in SIZES["small"].recipe() and "tokenizer" not in SIZES["small"].recipe()["config"]
    changed = tmp_path / "corpus.py"
    shutil.copy(corpus.__file__, changed)
    changed.write_text(changed.read_text() + "\n# one more template\n")
    monkeypatch.setattr(corpus, "__file__", str(changed))
    assert MID.key() != mid_key
    assert SIZES["small"].key() == small_key
    assert replace(MID, eval_every=7, log_every=3).key() == MID.key()  # progress settings are not the recipe


def test_mid_smoke_build_records_curve_and_a_scenario_runs_on_it(monkeypatch, tmp_path):
    from benchmarks.quality.scenarios import grafting
    from benchmarks.quality.scenarios._common import Context, load

    monkeypatch.setenv("FTPLUGINS_BENCH_CACHE", str(tmp_path))
    config = replace(smoke_of(MID), eval_every=5, curve_per_task=2)
    assert config.tokenizer == "char" and config.tasks == MID.tasks
    folder, record = pretrain.pretrained(config, log=lambda *_: None)
    with open(os.path.join(folder, "pretrained.json")) as handle:
        assert json.load(handle)["key"] == config.key() == record["key"]
    assert len(tasks.char_tokenizer()) < record["vocab_size"] <= len(corpus.char_tokenizer(mid_texts(2000)))
    assert record["build_wall_seconds"] >= record["seconds"] > 0
    assert set(record["accuracy"]) == set(MID.tasks)
    assert [p["step"] for p in record["heldout_curve"]] == [5, 10]
    assert all(set(p["accuracy"]) == set(MID.tasks) and p["eval_loss"] > 0 for p in record["heldout_curve"])
    model, tokenizer = load(folder)
    assert len(tokenizer) == record["vocab_size"] == model.config.vocab_size
    ctx = Context(folder=folder, key=record["key"], pretrain=config, seeds=[0], smoke=True, cache_root=str(tmp_path))
    result = grafting.run(ctx)
    assert result["rows"] and all("per_seed" in row for row in result["rows"].values())


def test_corpus_tags_leave_the_scenarios_tags_free():
    from benchmarks.quality.scenarios import alignment, many_shot  # few-shot-sft uses many-shot's tag

    corpus_tags = {t.tag for t in corpus.CORPUS_TASKS.values()}
    # f, l: editing and data-selection; i: composition; p: cls-rl
    scenario_tags = {alignment.TRIGGER_TAG, many_shot.TAG, "f", "l", "i", "p"}
    assert not corpus_tags & scenario_tags
    assert not corpus_tags & {t.tag for t in [*tasks.PRETRAIN_TASKS.values(), *tasks.TARGET_TASKS.values()]}


def test_a_mid_run_records_how_its_decoder_was_built(monkeypatch, tmp_path):
    """The cache is outside git, so a committed result must carry the build's facts (wall time, device, threads,
    vocabulary, held-out curve) for BENCHMARKS to cite them."""
    from benchmarks.quality.__main__ import main

    monkeypatch.setenv("FTPLUGINS_BENCH_CACHE", str(tmp_path / "cache"))
    result = main(["--smoke", "--model", "mid", "--methods", "full", "--baselines", "full",
                   "--out", str(tmp_path / "out")])
    pre = result["pretrained"]
    assert pre["vocab_size"] > len(tasks.char_tokenizer()) and pre["build_wall_seconds"] >= pre["build_seconds"] > 0
    assert pre["torch_threads"] >= 1 and pre["device"] == "cpu" and pre["heldout_curve"] == []
    assert f"vocabulary {pre['vocab_size']}" in (tmp_path / "out" / "quality.md").read_text()
    from benchmarks.quality import report

    curve = [{"step": 300, "eval_loss": 1.5, "accuracy_mean": 0.25},
             {"step": 600, "eval_loss": 1.25, "accuracy_mean": 0.5}]
    line = report._build_line({**pre, "heldout_curve": curve})
    assert "300: 1.500 / 0.250, 600: 1.250 / 0.500" in line and report._build_line({"accuracy": {}}) == ""


def test_tokenizer_diagnosis_changes_one_thing_per_row(monkeypatch, tmp_path):
    """The diagnosis compares the recipe with a BPE vocabulary (nothing else changed) and with mid's shape (nothing
    else changed); at smoke size it builds all three and scores every pre-training task."""
    from benchmarks.quality.scenarios import tokenizer_diagnosis as diag
    from benchmarks.quality.scenarios._common import Context

    small = SIZES["small"]
    rows = diag.variants(small, smoke=False)
    assert rows["as-built"] == small
    assert rows["bpe-4096"] == replace(small, tokenizer="bpe", vocab_size=4096)
    shape = {k: getattr(MID, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "learning_rate")}
    assert rows["mid-shape"] == replace(small, **shape) and rows["mid-shape"].tasks == small.tasks
    monkeypatch.setenv("FTPLUGINS_BENCH_CACHE", str(tmp_path))
    result = diag.run(Context(folder="", key="", pretrain=smoke_of(small), seeds=[0], smoke=True,
                              cache_root=str(tmp_path), log=lambda *_: None))
    assert list(result["rows"]) == ["as-built", "bpe-4096", "mid-shape"]
    for row in result["rows"].values():
        assert all(0.0 <= row[f"{task}_mean"] <= 1.0 for task in small.tasks)
    assert "vocabulary 49" in result["rows"]["as-built"]["note"]
    assert "vocabulary 49" not in result["rows"]["bpe-4096"]["note"]
