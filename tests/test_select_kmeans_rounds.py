"""Iterative kMQ (select_kmeans_rounds > 1): the draws' invariants, and the plugin form, where the rounds are
epochs of one run and a callback draws the next slice between them (the rows each epoch trains on are recorded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cpu_args

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.select_kmeans import plugin as kmeans_plugin
from ftplugins.methods.select_kmeans.iterative import IterativeDraws
from ftplugins.plugin import Plugin, hookimpl
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

ANIMALS = ["cat", "dog", "horse", "owl", "fox", "bear", "goat", "duck", "frog", "wolf"]


def two_topics():
    """30 arithmetic rows, then 10 rows about animals: two clusters a sentence encoder tells apart."""
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in arithmetic_dataset(30, seed=4)]
    return rows + [{"prompt": f"Describe the {a} in one sentence.", "completion": f"The {a} is an animal."}
                   for a in ANIMALS]


def animals_unlearned(model, tokenizer, rows):
    """A round scorer: the model is still far from the animal answers and has learned the arithmetic ones."""
    return [5.0 if "Describe" in row["prompt"] else 0.0 for row in rows]


def draws(seed=0, holdout=2, total=30, rounds=3):
    assignment = np.repeat(np.arange(4), [40, 30, 20, 10])
    return IterativeDraws(assignment, 4, total, rounds, seed, temperature=0.5, holdout=holdout)


def far_from(cluster, rows, assignment):
    return [5.0 if assignment[i] == cluster else 0.0 for i in rows]


# --- the draws -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("holdout", [0, 2])
def test_slices_are_disjoint_equal_and_their_union_within_the_budget(holdout):
    d = draws(holdout=holdout, total=31)
    d.first()
    while not d.done:
        d.next(np.random.default_rng(len(d.slices)).random(len(d.scored_rows())))
    flat = sum(d.slices, [])
    assert [len(s) for s in d.slices] == [10, 10, 10]
    assert len(flat) == len(set(flat)) == 30 <= 31 and sorted(flat) == d.selected.tolist()
    assert not set(flat) & set(d.held_out.tolist())
    assert len(d.held_out) == (0 if holdout == 0 else 8)  # 2 per cluster
    assert d.report()["per_cluster"][0]["chosen"] == int(np.sum(d.assignment[flat] == 0))


def test_reweighting_follows_the_scores():
    for far in range(4):
        d = draws()
        d.first()
        second = d.next(far_from(far, d.scored_rows(), d.assignment))
        assert int(np.argmax(d.weights[-1])) == far
        counts = np.bincount(d.assignment[second], minlength=4)
        assert counts[far] == max(counts), (far, counts)  # the cluster the model is far from gets the slice


def test_same_seed_same_slices_other_seed_other_slices():
    def run(seed):
        d = draws(seed=seed)
        d.first()
        while not d.done:
            d.next(far_from(1, d.scored_rows(), d.assignment))
        return d.slices, d.held_out.tolist()

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_budget_errors_name_the_fix():
    with pytest.raises(OptionError, match="at least one row"):
        draws(total=2, rounds=3)
    with pytest.raises(OptionError, match="held out"):
        draws(total=99, holdout=2)
    d = draws()
    d.first()
    with pytest.raises(FtpluginsError, match="one float per row"):
        d.next([1.0])


# --- the plugin: rounds are epochs ---------------------------------------------------------------------------------


class RecordBatches(Plugin):
    name = "record_batches"
    summary = "test helper: the token rows of every training micro-batch"
    options = None

    def __init__(self):
        self.batches = []

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        if model.training:
            mask = inputs["attention_mask"].bool()
            self.batches.append([tuple(ids[m].tolist()) for ids, m in zip(inputs["input_ids"], mask)])
        return inner()


def train_in_rounds(tmp_path, epochs=3, args=None, stop_at=None, resume=None, **options):
    """Train on the two topics in 3 rounds; the pool rows of every training micro-batch, in order, and the report."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ftplugins.testing import StopAt

    recorder = RecordBatches()
    settings = dict(select_kmeans_budget=12, select_kmeans_rounds=3, select_kmeans_clusters=2,
                    select_kmeans_iterations=20, select_kmeans_restarts=1, select_kmeans_quality="none",
                    select_kmeans_temperature=0.5, select_kmeans_holdout=2,
                    select_kmeans_round_score=f"{__name__}:animals_unlearned",
                    select_kmeans_cache_dir=str(tmp_path / "cache"), select_kmeans_batch_size=8)
    settings.update(options)
    trainer_cls = ftplugins.compose(SFTTrainer, [kmeans_plugin, recorder], **settings)
    pool = two_topics()
    source = Dataset.from_list(pool)
    trainer = trainer_cls(model=tiny_llama(), processing_class=tiny_tokenizer(), train_dataset=source,
                          args=cpu_args(SFTConfig, tmp_path / "out", max_steps=-1, num_train_epochs=epochs,
                                        **(args or {})),
                          callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.train(resume_from_checkpoint=resume)
    rows = getattr(trainer.train_dataset, "rows", trainer.train_dataset)  # the tokenized pool under the rounds view
    row_of = {tuple(rows[i]["input_ids"]): i for i in range(len(rows))}
    batches = [[row_of[t] for t in batch] for batch in recorder.batches]
    report = tmp_path / "out" / "select_kmeans_report.json"
    return pool, batches, json.load(open(report)) if report.exists() else None, source


def test_plugin_trains_each_round_on_its_slice_and_draws_toward_the_unlearned_cluster(tmp_path):
    pool, batches, report, source = train_in_rounds(tmp_path, select_kmeans_round_rows="slice")
    trained = [batches[e * 2] + batches[e * 2 + 1] for e in range(3)]  # 4-row slices, micro-batches of 2
    assert [sorted(rows) for rows in trained] == report["slices"]  # epoch r trained on exactly slice r
    flat = sum(report["slices"], [])
    assert len(flat) == len(set(flat)) == report["selected"] == 12  # disjoint, the whole budget
    assert not set(flat) & set(report["held_out"])
    first = [pool[i]["prompt"] for i in report["slices"][0]]
    assert sum("Describe" in p for p in first) == 2  # round 1: evenly over the two clusters
    second = [pool[i]["prompt"] for i in report["slices"][1]]
    assert all("Describe" in p for p in second), second  # round 2: the cluster the model is far from
    assert len(report["cluster_weights"]) == 2 and report["rounds_trained"] == 3
    assert source.num_rows == 40  # the source is untouched

    _, again, same, _ = train_in_rounds(tmp_path / "again", select_kmeans_round_rows="slice")
    assert same["slices"] == report["slices"]  # same seed, same rounds


@pytest.mark.parametrize("save,epochs", [("steps", 3), ("epoch", 3), ("steps", 6)])
def test_a_run_resumed_after_round_one_trains_the_slices_of_an_uninterrupted_run(tmp_path, save, epochs):
    """Stopped at step 2 (epoch 1's last step), resumed from checkpoint-2: the same micro-batches as a whole run.
    With save_strategy steps the checkpoint precedes round 1's end (the resumed run draws round 2 itself), with
    epoch it follows it (round 2 comes from the checkpoint); with 6 epochs the cut is inside round 1 (2 epochs)."""
    from ftplugins.methods.select_kmeans.rounds import ROUNDS_FILE

    args = {"save_strategy": save, "save_steps": 2}
    options = dict(select_kmeans_cache_dir=str(tmp_path / "cache"), select_kmeans_round_rows="slice")
    _, whole, report, _ = train_in_rounds(tmp_path / "whole", epochs, args=args, **options)
    _, cut, _, _ = train_in_rounds(tmp_path / "cut", epochs, args=args, stop_at=2, **options)
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-2"
    assert cut == whole[:2] and (checkpoint / ROUNDS_FILE).is_file()
    _, resumed, again, _ = train_in_rounds(tmp_path / "cut", epochs, args=args, resume=True, **options)
    assert resumed == whole[2:]  # the rest of the run: the same rows, in the same order
    assert again["slices"] == report["slices"] and again["cluster_weights"] == report["cluster_weights"]
    per_round = epochs // 3
    for r, rows in enumerate(report["slices"]):  # every epoch of round r trained slice r
        for e in range(per_round * r, per_round * (r + 1)):
            assert sorted(whole[2 * e] + whole[2 * e + 1]) == rows, (r, e)


@pytest.mark.parametrize("save", ["steps", "epoch"])
def test_growing_rounds_train_every_row_selected_so_far_and_resume_to_the_same_batches(tmp_path, save):
    """The default (the paper's protocol): round r's epoch trains every row of slices 1..r, cycled to the budget's 12
    rows, so the run costs single-shot kMQ's 3 epochs x 12 rows and the last round trains the whole budget once.
    Cut at round 1's end (step 6) and resumed: the same micro-batches as the whole run."""
    args = {"save_strategy": save, "save_steps": 6}
    options = dict(select_kmeans_cache_dir=str(tmp_path / "cache"))
    pool, whole, report, _ = train_in_rounds(tmp_path / "whole", args=args, **options)
    assert len(whole) == 18  # 3 epochs of 12 rows in micro-batches of 2
    slices = report["slices"]
    for r in range(3):
        so_far = [i for piece in slices[: r + 1] for i in piece]
        trained = sorted(sum(whole[6 * r: 6 * r + 6], []))
        assert trained == sorted(so_far[i % len(so_far)] for i in range(12)), r
    assert sorted(sum(whole[12:], [])) == sorted(sum(slices, []))  # the last round: the whole budget, once each
    assert all("Describe" in pool[i]["prompt"] for i in slices[1])  # still drawn toward the unlearned cluster

    _, cut, _, _ = train_in_rounds(tmp_path / "cut", args=args, stop_at=6, **options)
    assert cut == whole[:6]
    _, resumed, again, _ = train_in_rounds(tmp_path / "cut", args=args, resume=True, **options)
    assert resumed == whole[6:] and again["slices"] == slices


def test_resuming_with_the_other_round_rows_is_refused(tmp_path):
    args = {"save_strategy": "steps", "save_steps": 2}
    train_in_rounds(tmp_path, args=args, stop_at=2, select_kmeans_round_rows="slice")
    with pytest.raises(FtpluginsError, match="select_kmeans_round_rows slice"):
        train_in_rounds(tmp_path, args=args, resume=True)  # growing, the default
    with pytest.raises(OptionError, match="round_rows .union.: expected one of growing, slice"):
        train_in_rounds(tmp_path / "bad", select_kmeans_round_rows="union")


def test_resuming_from_a_checkpoint_without_the_rounds_is_refused(tmp_path):
    from ftplugins.methods.select_kmeans.rounds import ROUNDS_FILE

    args = {"save_strategy": "steps", "save_steps": 2}
    train_in_rounds(tmp_path, args=args, stop_at=2, select_kmeans_rounds=1)  # single-shot: a whole checkpoint
    assert not (tmp_path / "out" / "checkpoint-2" / ROUNDS_FILE).exists()
    with pytest.raises(FtpluginsError, match=f"checkpoint-2 has no {ROUNDS_FILE}"):
        train_in_rounds(tmp_path, args=args, resume=str(tmp_path / "out" / "checkpoint-2"))


def test_resuming_with_other_options_is_refused(tmp_path):
    args = {"save_strategy": "steps", "save_steps": 2}
    train_in_rounds(tmp_path, args=args, stop_at=2)
    with pytest.raises(FtpluginsError, match="drawn from another pool"):
        train_in_rounds(tmp_path, args=args, resume=True, select_kmeans_holdout=3)


def test_plugin_refuses_fewer_epochs_than_rounds(tmp_path):
    with pytest.raises(FtpluginsError, match="num_train_epochs to a multiple of 3"):
        train_in_rounds(tmp_path, epochs=2)


def test_offline_selection_refuses_rounds_and_names_the_two_forms_that_train():
    from ftplugins.data import select

    with pytest.raises(FtpluginsError, match="select_iteratively"):
        select("kmeans", two_topics(), 6, rounds=3, cache_dir="none", show_progress=False)


def test_draws_within_a_cluster_follow_quality_like_kmq():
    assignment = np.repeat(np.arange(2), [50, 50])
    quality = np.where(np.arange(100) % 2 == 0, 0.0, -50.0)  # even rows are the good ones
    d = IterativeDraws(assignment, 2, 30, 3, seed=0, temperature=1.0, holdout=2, quality=quality)
    d.first()
    d.next(np.zeros(len(d.scored_rows())))
    assert all(i % 2 == 0 for i in d.selected.tolist())
