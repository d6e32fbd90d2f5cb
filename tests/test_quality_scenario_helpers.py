"""The data, naming and rate-choosing helpers of the quality scenarios (no model involved)."""

import random
from types import SimpleNamespace

from benchmarks.quality import tasks
from benchmarks.quality.scenarios import conjugate_partial, soup_close


def test_mixed_rows_hold_the_stated_share_of_conflicting_rows():
    ctx = SimpleNamespace(pretrain=SimpleNamespace(tasks=tuple(tasks.PRETRAIN_TASKS)))
    rows = conjugate_partial.mixed_rows(ctx, 256, 0.25, seed=0)
    reverse = [r for r in rows if r["prompt"].startswith("r:")]
    assert len(rows) == 256 and len(reverse) == 64
    # every reverse row is an overwrite row (answered with the word itself), none keeps the reverse answer
    assert all(r["completion"] == r["prompt"][2:-1] for r in reverse)
    other_tags = {tasks.TASKS[t].example(random.Random(0))["prompt"].split(":")[0]
                  for t in tasks.PRETRAIN_TASKS if t != "reverse"}
    assert {r["prompt"].split(":")[0] for r in rows if r not in reverse} == other_tags
    assert rows != conjugate_partial.mixed_rows(ctx, 256, 0.25, seed=1)  # the seed changes the rows


def test_ingredient_names_are_unique_when_learning_rates_repeat():
    assert soup_close.ingredient_names((1e-4, 3e-4)) == ["ft-1e-04", "ft-3e-04"]
    names = soup_close.ingredient_names((4e-4,) * 4)
    assert names == [f"ft-4e-04-order{i}" for i in range(4)]


def test_gan_diagnosis_counts_the_mixture_modes_the_rows_cover():
    """gan-augment-imbalanced's `modes`: rows drawn at a class's two centres cover 2 modes of that class; rows from one
    centre only cover 1, whatever their number (the diagnosis: synthetic rows cannot add a mode the GAN never saw)."""
    import numpy as np

    from benchmarks.quality.scenarios import gan_augment as base
    from benchmarks.quality.scenarios.gan_augment_imbalanced import modes_covered

    centres = base.centres()
    x = np.concatenate([centres[[0, 3, 1]], centres[[0, 0]] + 0.1])  # class 0 at both centres, class 1 at one
    y = np.array([0, 0, 1, 0, 0])
    assert modes_covered(x, y) == 3
    assert modes_covered(centres[[2, 2, 2]] + 0.05, np.array([2, 2, 2])) == 1
    assert modes_covered(*base.draw(200, seed=0)) == 6


def test_gan_manifold_data_is_seeded_and_smote_rows_lie_between_same_class_neighbours():
    """gan-augment-manifold: same seed, same rows (one fixed embedding); every interpolation row lies on the segment
    between two real rows of its own class; rows drawn at the curves are on-manifold, rows pushed off are not."""
    import numpy as np

    from benchmarks.quality.scenarios import gan_augment_manifold as m

    x, y = m.draw(5, seed=3, dim=10, noise=0.05)
    assert np.array_equal(x, m.draw(5, seed=3, dim=10, noise=0.05)[0])
    assert not np.allclose(x, m.draw(5, seed=4, dim=10, noise=0.05)[0])
    ix, iy = m.interpolate(x, y, ratio=2.0, neighbours=2, seed=0)
    assert np.bincount(iy).tolist() == [10, 10, 10]
    for row, c in zip(ix, iy):
        real = x[y == c]
        # row = a + lam (b - a) for some pair (a, b) of its class, 0 <= lam <= 1: collinear and between them
        found = False
        for a in real:
            for b in real:
                d = b - a
                if not d.any():
                    continue
                lam = float((row - a) @ d / (d @ d))
                if -1e-9 <= lam <= 1 + 1e-9 and np.allclose(a + lam * d, row, atol=1e-9):
                    found = True
        assert found
    # on the curves: distance 0 and the nearest parameter; 1.0 off the plane: distance 1.0
    q = m.embedding(10)
    t = np.array([0, 133, 399]) / (m.CURVE_POINTS - 1)  # points of the discretised curve
    on = m.curve(1, t) @ q.T
    distance, nearest = m.manifold_distance(on, np.array([1, 1, 1]), 10)
    assert np.allclose(distance, 0, atol=1e-6) and np.allclose(nearest, t)
    off = on + (np.eye(10)[0] - q @ (q.T @ np.eye(10)[0])) / np.linalg.norm(np.eye(10)[0] - q @ (q.T @ np.eye(10)[0]))
    assert np.allclose(m.manifold_distance(off, np.array([1, 1, 1]), 10)[0], 1.0, atol=1e-6)
    # the Bayes classifier labels points on each curve with that curve's class; coverage counts segments
    assert (m.bayes(np.concatenate([m.curve(c, t[1:2]) @ q.T for c in range(3)]), 10, 0.05) == [0, 1, 2]).all()
    grid = np.concatenate([m.curve(c, (np.arange(m.SEGMENTS) + 0.5) / m.SEGMENTS) for c in range(3)]) @ q.T
    labels = np.repeat(np.arange(3), m.SEGMENTS)
    assert m.coverage(grid, labels, 10, radius=0.05) == 1.0
    assert m.coverage(grid[::2], labels[::2], 10, radius=0.05) == 0.5


def test_a_scenario_row_keeps_the_rate_with_the_best_mean_validation_accuracy_and_reports_its_test_numbers():
    """``choose_rate``: the validation split picks (mean over seeds; a tie goes to the lower rate), the test set
    never does; the row's results are the chosen rate's, and the record shows each rate's validation and test."""
    from benchmarks.quality.report import scenario_sweep_table
    from benchmarks.quality.scenarios._common import choose_rate

    def runs(lr, val, test):
        return [{"learning_rate": lr, "val": v, "ood": t, "seed": i} for i, (v, t) in enumerate(zip(val, test))]

    by_lr = {"1e-04": runs(1e-4, (0.9, 0.7), (1.0, 1.0)),  # the best test: not chosen
             "3e-04": runs(3e-4, (1.0, 0.9), (0.6, 0.8)),
             "1e-03": runs(1e-3, (0.9, 1.0), (0.5, 0.5))}  # ties 3e-4 on validation: the lower rate wins
    logged = []
    chosen, record = choose_rate(by_lr, val="val", test="ood", log=logged.append, name="lp-ft")
    assert chosen is by_lr["3e-04"] and record["chosen"] == "3e-04" and list(record["candidates"]) == list(by_lr)
    assert record["per_lr"]["1e-04"]["accuracy_mean"] == 1.0 and record["per_lr"]["3e-04"]["val_accuracy_mean"] == 0.95
    assert logged and "lp-ft: chosen lr 3e-04" in logged[0]
    table = "".join(scenario_sweep_table({"extra": {"lr_sweep": {"lp-ft": record}},
                                          "config": {"lr_test_label": "OOD test acc."}}))
    assert "| row | lr | validation acc. | OOD test acc. |" in table and "| `lp-ft` | **3e-04** |" in table
    assert scenario_sweep_table({"extra": {}}) == []  # a scenario that did not sweep shows no table


def test_the_reward_gap_lowers_noisy_clusters_where_the_nll_would_raise_them(monkeypatch):
    """kmq-iter-reward's d: 1 for a right gold answer the model gets wrong, -1 for a noisy gold answer the model
    gets right (its cluster loses weight), 0 when the model already answers as the gold does."""
    from benchmarks.quality.scenarios import data_selection

    rows = [{"prompt": "r:abc=", "completion": "cba"},   # clean, the model answers wrongly
            {"prompt": "f:dog=", "completion": "q"},     # noisy gold, the model answers by the rule
            {"prompt": "l:cat=", "completion": "t"},     # clean, learned
            {"prompt": "c:owl=", "completion": "xyz"}]   # noisy gold, the model echoes the noise
    answers = ["abc", "d", " t", "xyz"]
    monkeypatch.setattr(data_selection, "greedy", lambda model, tokenizer, ids, max_new_tokens: answers)
    monkeypatch.setattr(data_selection, "encode", lambda tokenizer, prompt: [0])
    assert data_selection.reward_gap(None, None, rows) == [1.0, -1.0, 0.0, 0.0]
    assert data_selection.right("r:abc=", "cba") and not data_selection.right("c:owl=", "xyz")


def test_a_derived_build_records_the_torch_thread_count_it_ran_at(tmp_path):
    """The cache key leaves the thread count out (one cache for runs at any count); the record names it, since a
    build at another count is not bit-identical."""
    import torch

    from benchmarks.quality.scenarios._common import cached_build

    ctx = SimpleNamespace(cache_root=str(tmp_path))
    folder, record = cached_build(ctx, "derived", {"steps": 1}, lambda staging: {"seconds": 0.0})
    assert record["torch_threads"] == torch.get_num_threads() and record["seconds"] == 0.0
    assert cached_build(ctx, "derived", {"steps": 1}, lambda staging: {}) == (folder, record)


def test_own_background_counts_the_samples_drawn_on_their_class_s_one_real_background():
    import torch

    from benchmarks.quality.scenarios import bob_synthetic as bob

    means = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])  # per TEST_BACKGROUNDS
    own = [bob.TEST_BACKGROUNDS.index(bob.REAL_BACKGROUND[c]) for c in bob.CLASSES]
    labels = torch.tensor([0, 1, 2, 0])
    # the first three on their class's own background, the last (a square) on the disc's
    drawn = [own[0], own[1], own[2], own[1]]
    noise = 0.01 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latents = means[drawn][:, :, None, None].expand(4, 4, 8, 8) + noise
    assert bob.own_background_share(latents, labels, means) == 0.75
    assert bob.background_probe(latents[:3], [bob.TEST_BACKGROUNDS[i] for i in drawn[:3]], means) == 1.0


def test_the_mlm_head_corpus_shares_no_word_with_the_task_and_labels_its_summaries_by_polarity():
    """PET's pre-trained head must get its cloze prior from other words than the task's (as BERT's comes from web text,
    not from the benchmark), and each summary's good / bad must follow the clause, negation included."""
    from benchmarks.quality.scenarios import few_label, few_label_mlm, minilm_classification as task

    corpus_words = set(few_label_mlm.CORPUS_NOUNS + few_label_mlm.CORPUS_POSITIVE + few_label_mlm.CORPUS_NEGATIVE
                       + few_label_mlm.NEUTRAL)
    task_words = set(task.NOUNS + task.POSITIVE + task.NEGATIVE + few_label.SHIFT_NOUNS + few_label.SHIFT_POSITIVE
                     + few_label.SHIFT_NEGATIVE)
    assert not corpus_words & task_words
    rng = random.Random(0)
    rows = [few_label_mlm.corpus_sentence(rng, 0.7) for _ in range(500)]
    reviews = [r for r in rows if r["label"] is not None]
    assert 0.6 < len(reviews) / len(rows) < 0.8
    for r in reviews:
        clause, summary = r["text"].split(". ", 1)
        adjective, negated = clause.split()[-1], any(w in ("not", "never") for w in clause.split())
        polarity = adjective in few_label_mlm.CORPUS_POSITIVE
        assert r["label"] == int(polarity != negated)
        assert summary.endswith(("good.", "bad.")) and summary.endswith("good.") == bool(r["label"])
    assert any(w in ("not", "never") for r in reviews for w in r["text"].split())
