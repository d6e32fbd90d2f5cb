"""select_kmeans, select_ot, select_influence: the invariants of each method, in all three usage forms
(plugin through ``ftplugins.compose``, ``ftplugins.data.select``, ``ftplugins select``), and bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.cli import main as cli
from ftplugins.data import select
from ftplugins.data.embed import SentenceEncoder
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.select_influence import plugin as influence_plugin
from ftplugins.methods.select_kmeans import plugin as kmeans_plugin
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

QUIET = {"show_progress": False, "batch_size": 8, "chunk_rows": 16}



def mixed_pool():
    """Arithmetic problems (many) and sentences about animals (few): two topics a selector can tell apart."""
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in arithmetic_dataset(30, seed=4)]
    animals = ["cat", "dog", "horse", "owl", "fox", "bear", "goat", "duck", "frog", "wolf"]
    rows += [{"prompt": f"Describe the {a} in one sentence.", "completion": f"The {a} is an animal."} for a in animals]
    return rows


def quality_by_length(batch):
    """A user scorer: longer completions are better."""
    return [float(len(c)) for c in batch["completion"]]


def file_digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), tiny_tokenizer()


# --- select_kmeans ---------------------------------------------------------------------------------------------


def test_kmq_counts_sum_to_the_budget_and_follow_cluster_sizes(tmp_path):
    pool = mixed_pool()
    result = select("kmeans", pool, 12, clusters=3, iterations=20, restarts=2, cache_dir=str(tmp_path), **QUIET)
    per_cluster = result.report["per_cluster"]
    assert sum(c["chosen"] for c in per_cluster.values()) == 12 == len(result.indices) == len(result.dataset)
    total = sum(c["size"] for c in per_cluster.values())
    for counts in per_cluster.values():
        assert abs(counts["chosen"] - 12 * counts["size"] / total) < 1
    assert len(set(result.indices)) == 12
    assert [pool[i]["prompt"] for i in result.indices] == result.dataset["prompt"]


def test_kmq_same_seed_same_selection_and_the_source_is_untouched(tmp_path):
    pool = mixed_pool()
    before = json.dumps(pool)
    options = dict(clusters=4, iterations=20, restarts=1, cache_dir=str(tmp_path), **QUIET)
    first = select("kmeans", pool, 10, seed=3, **options)
    again = select("kmeans", pool, 10, seed=3, **options)
    assert first.indices == again.indices
    assert json.dumps(pool) == before
    seeds = {tuple(select("kmeans", pool, 10, seed=s, **options).indices) for s in range(4)}
    assert len(seeds) > 1  # the seed does drive the draws


def test_kmq_user_scorer_weights_draws_within_a_cluster(tmp_path):
    pool = mixed_pool()
    result = select("kmeans", pool, 10, clusters=1, iterations=5, restarts=1, temperature=1e-3,
                    quality=f"{__name__}:quality_by_length", cache_dir=str(tmp_path), **QUIET)
    assert result.report["quality"].endswith("quality_by_length")
    lengths = np.array([len(r["completion"]) for r in pool])
    # Near-zero temperature: the draws are the cluster's best-scored (longest) completions.
    assert min(lengths[result.indices]) >= max(np.delete(lengths, result.indices))
    uniform = select("kmeans", pool, 10, clusters=1, iterations=5, restarts=1, quality="none",
                     cache_dir=str(tmp_path), **QUIET)
    assert uniform.indices != result.indices


def test_kmq_perplexity_quality_uses_the_model(tmp_path, tiny):
    model, tokenizer = tiny
    result = select("kmeans", mixed_pool(), 8, clusters=2, iterations=10, restarts=1, model=model,
                    tokenizer=tokenizer, cache_dir=str(tmp_path), **QUIET)
    assert result.report["quality"] == "perplexity" and len(result.indices) == 8
    assert result.scores is not None and np.all(result.scores < 0)  # minus the mean NLL


# --- select_ot ---------------------------------------------------------------------------------------------------


def test_ot_selects_toward_the_target(tmp_path):
    pool = mixed_pool()
    target = [{"prompt": f"Describe the {a} in one sentence."} for a in ("cow", "lion", "mouse")]
    result = select("ot", pool, 6, target=target, cache_dir=str(tmp_path), **QUIET)
    picked = result.dataset["prompt"]
    assert sum("Describe" in p for p in picked) >= 5, picked  # 10 of 40 rows are on the target's topic
    assert result.report["converged"] and result.report["target_rows"] == 3


def test_ot_takes_the_most_negative_calibrated_gradients(tmp_path):
    result = select("ot", mixed_pool(), 7, target=arithmetic_dataset(5, seed=9), cache_dir=str(tmp_path), **QUIET)
    gradient = result.scores
    assert abs(gradient.sum()) < 1e-6
    assert sorted(result.indices) == sorted(np.argsort(gradient, kind="stable")[:7].tolist())


def test_ot_target_errors(tmp_path):
    with pytest.raises(FtpluginsError, match="target set"):
        select("ot", mixed_pool(), 5, cache_dir=str(tmp_path), **QUIET)
    with pytest.raises(FtpluginsError, match="empty"):
        select("ot", mixed_pool(), 5, target=[], cache_dir=str(tmp_path), **QUIET)
    with pytest.raises(DatasetColumnsError, match="shares no columns"):
        select("ot", mixed_pool(), 5, target=[{"question": "x"}], cache_dir=str(tmp_path), **QUIET)


# --- select_influence ----------------------------------------------------------------------------------------


INFLUENCE = dict(strata=4, hard_prune=0.1, depth=10, damping=0.3, hvp_batch_size=4, max_length=48, **QUIET)


def test_influence_coverage_takes_from_every_stratum_and_is_seeded(tmp_path, tiny):
    model, tokenizer = tiny
    pool = arithmetic_dataset(24, seed=6)
    first = select("influence", pool, 8, model=model, tokenizer=tokenizer, cache_dir=str(tmp_path), **INFLUENCE)
    report = first.report
    assert len(first.indices) == 8 and sum(report["per_stratum"].values()) == 8
    assert all(count > 0 for count in report["per_stratum"].values())
    assert set(report["per_stratum"]) == set(report["stratum_sizes"])
    hardest = np.argsort(-first.scores, kind="stable")[: report["hard_pruned"]]
    assert not set(hardest.tolist()) & set(first.indices)
    again = select("influence", pool, 8, model=model, tokenizer=tokenizer, cache_dir="none", **INFLUENCE)
    assert again.indices == first.indices and np.allclose(again.scores, first.scores)


def test_influence_needs_a_model():
    with pytest.raises(FtpluginsError, match="--model"):
        select("influence", arithmetic_dataset(8), 4, cache_dir="none", **QUIET)


# --- plugin form ----------------------------------------------------------------------------------------------


def test_plugin_selects_the_train_split_only(tmp_path, tiny):
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny
    train, evaluation = arithmetic_dataset(32, seed=1), arithmetic_dataset(6, seed=2)
    trainer_cls = ftplugins.compose(SFTTrainer, [kmeans_plugin], select_kmeans_budget=0.25,
                                    select_kmeans_clusters=3, select_kmeans_iterations=10,
                                    select_kmeans_quality="none", select_kmeans_cache_dir=str(tmp_path / "cache"))
    trainer = trainer_cls(model=model, args=cpu_args(SFTConfig, tmp_path / "out"), train_dataset=train,
                          eval_dataset=evaluation, processing_class=tokenizer)
    assert len(trainer.train_dataset) == 8 and len(trainer.eval_dataset) == 6
    report = json.load(open(tmp_path / "out" / "select_kmeans_report.json"))
    assert report["selected"] == 8 and report["pool_rows"] == 32
    assert len(train) == 32  # the source is untouched
    trainer.train()


def test_influence_plugin_through_compose(tmp_path, tiny):
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny
    options = {f"select_influence_{k}": v for k, v in INFLUENCE.items() if k not in ("show_progress",)}
    trainer_cls = ftplugins.compose(SFTTrainer, [influence_plugin], select_influence_budget=6,
                                    select_influence_cache_dir="none", **options)
    trainer = trainer_cls(model=model, args=cpu_args(SFTConfig, tmp_path / "out"),
                          train_dataset=arithmetic_dataset(20, seed=3), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 6


# --- command line ---------------------------------------------------------------------------------------------


@pytest.fixture()
def pool_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in mixed_pool()))
    return str(path)


def test_cli_writes_rows_report_and_histogram(pool_file, tmp_path, capsys):
    before = file_digest(pool_file)
    out = tmp_path / "sel" / "selected.jsonl"
    cli(["select", "kmeans", "--data", pool_file, "--budget", "9", "-o", str(out), "--clusters", "3",
         "--iterations", "10", "--quality", f"{__name__}:quality_by_length", "--cache_dir", str(tmp_path / "c"),
         "--quiet"])
    assert "kept 9 of 40" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pool = [json.loads(line) for line in open(pool_file)]
    assert len(rows) == 9 and all(row in pool for row in rows)
    report = json.load(open(tmp_path / "sel" / "selected.report.json"))
    assert report["budget"] == 9 and sum(c["chosen"] for c in report["per_cluster"].values()) == 9
    assert report["seed"] == 0 and report["embedding_cache_key"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sel" / "selected.scores.png").read_bytes()[:4] == b"\x89PNG"
    assert file_digest(pool_file) == before


def test_interrupted_cli_selection_resumes_to_the_identical_result(pool_file, tmp_path, monkeypatch, capsys):
    args = ["select", "ot", "--data", pool_file, "--target", pool_file, "--budget", "7", "--quiet",
            "--batch_size", "4", "--chunk_rows", "8"]
    cli([*args, "-o", str(tmp_path / "reference.jsonl"), "--cache_dir", str(tmp_path / "fresh")])
    real, calls = SentenceEncoder.encode, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(SentenceEncoder, "encode", interrupted)
    cache = ["--cache_dir", str(tmp_path / "resumable")]
    with pytest.raises(SystemExit) as exit_info:
        cli([*args, "-o", str(tmp_path / "resumed.jsonl"), *cache])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run the same command again to resume" in err
    monkeypatch.setattr(SentenceEncoder, "encode", real)
    counted = []
    monkeypatch.setattr(SentenceEncoder, "encode", lambda self, batch: counted.append(1) or real(self, batch))
    cli([*args, "-o", str(tmp_path / "resumed.jsonl"), *cache])
    # 40 rows in chunks of 8 (2 batches of 4): the 2 finished chunks are not redone, the 3 others are; the target
    # is the same file, so its embeddings are the pool's (same cache key) and cost nothing.
    assert len(counted) == 3 * 2
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "reference.jsonl").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--budget", "41"], "larger than the pool"),
    (["--budget", "0"], "expected a fraction in (0, 1) or a row count >= 1"),
    (["--budget", "-3"], "expected a fraction in (0, 1) or a row count >= 1"),
    (["--budget", "2.5"], "must be a whole number"),
    (["--text_field", "instruction"], "text_field='instruction' is not a column"),
    (["--quality", "no_such_module_xyz:score"], "cannot import module 'no_such_module_xyz'"),
])
def test_bad_input_is_one_clear_line(pool_file, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["select", "kmeans", "--data", pool_file, "-o", str(tmp_path / "o.jsonl"), "--clusters", "2",
             "--quiet", "--cache_dir", str(tmp_path / "c"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_empty_dataset_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit):
        cli(["select", "kmeans", "--data", str(empty), "-o", str(tmp_path / "o.jsonl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty" in err


def test_unknown_method_and_option_name_the_choices():
    with pytest.raises(FtpluginsError, match="did you mean kmeans"):
        select("kmeens", mixed_pool(), 3)
    with pytest.raises(OptionError, match="did you mean clusters"):
        select("kmeans", mixed_pool(), 3, clusterz=4)


# --- iterative kMQ ------------------------------------------------------------------------------------------------


def test_iterative_rounds_draw_new_rows_toward_clusters_still_unlearned(tmp_path, tiny):
    from ftplugins.methods.select_kmeans import select_iteratively

    model, tokenizer = tiny
    pool = mixed_pool()  # 30 arithmetic rows, 10 animal rows
    seen = []

    def unlearned_animals(model, tokenizer, rows):
        """d_i: the model 'still fails' the animal rows and has learned the arithmetic ones."""
        return [5.0 if "Describe" in row["prompt"] else 0.0 for row in rows]

    result = select_iteratively(pool, 15, lambda rows, r: seen.append((r, len(rows))), model=model,
                                tokenizer=tokenizer, rounds=3, clusters=2, iterations=20, restarts=1,
                                temperature=0.5, score=unlearned_animals, cache_dir=str(tmp_path), **QUIET)
    assert seen == [(0, 5), (1, 5), (2, 5)]
    first = [pool[i]["prompt"] for i in result.rounds[0]]
    assert sum("Describe" in p for p in first) in (2, 3)  # round 1: evenly over the 2 clusters
    flat = sum(result.rounds, [])
    assert len(flat) == len(set(flat)) == 15 and sorted(flat) == result.indices  # new rows every round
    for weights in result.weights:
        assert abs(sum(weights) - 1) < 1e-12
    later = [pool[i]["prompt"] for i in result.rounds[1]]
    assert sum("Describe" in p for p in later) >= 4, later  # the unlearned cluster gets the next slice


def test_even_counts_fill_evenly_and_respect_cluster_sizes():
    from ftplugins.methods.select_kmeans.iterative import draw_counts, even_counts

    assert even_counts(np.array([10, 1, 10]), 9).tolist() == [4, 1, 4]
    assert even_counts(np.array([3, 3, 3]), 9).tolist() == [3, 3, 3]
    rng = np.random.default_rng(0)
    for _ in range(50):
        available = rng.integers(0, 8, size=5)
        size = int(rng.integers(0, available.sum() + 1))
        for counts in (even_counts(available, size), draw_counts(rng.random(5), available, size, rng)):
            assert counts.sum() == size and np.all(counts <= available)


def test_iterative_with_a_real_trainer_between_rounds(tmp_path):
    from trl import SFTConfig, SFTTrainer

    from ftplugins.methods.select_kmeans import select_iteratively

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    before = [p.detach().clone() for p in model.parameters()]

    def train_round(rows, round_index):
        args = cpu_args(SFTConfig, tmp_path / f"round{round_index}", max_steps=1)
        SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer).train()

    result = select_iteratively(arithmetic_dataset(24, seed=8), 8, train_round, model=model, tokenizer=tokenizer,
                                rounds=2, clusters=3, iterations=10, restarts=1, cache_dir="none", **QUIET)
    assert len(result.indices) == 8 and len(result.weights) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the rounds trained it


def test_ot_on_gradient_features(tmp_path, tiny):
    model, tokenizer = tiny
    options = dict(target=arithmetic_dataset(4, seed=9), encoder="gradients", gradient_dim=256, model=model,
                   tokenizer=tokenizer, cache_dir=str(tmp_path), max_length=48, **QUIET)
    first = select("ot", arithmetic_dataset(16, seed=2), 5, **options)
    assert len(first.indices) == 5 and first.report["converged"]
    assert select("ot", arithmetic_dataset(16, seed=2), 5, **options).indices == first.indices


def test_cli_influence_with_a_model_folder(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_dataset(12, seed=4).to_list()))
    out = tmp_path / "inf.jsonl"
    cli(["select", "influence", "--data", str(data), "--model", tiny_model_dir, "--budget", "4", "--damping", "0.3",
         "--depth", "10", "--strata", "2", "--max_length", "48", "-o", str(out), "--quiet", "--cache_dir", "none"])
    assert len(out.read_text().splitlines()) == 4
    assert json.load(open(tmp_path / "inf.report.json"))["per_stratum"]
