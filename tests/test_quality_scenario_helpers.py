"""The data and naming helpers of the soup-close and conjugate-partial quality scenarios (no model involved)."""

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
