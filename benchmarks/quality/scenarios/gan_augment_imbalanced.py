"""gan_augment where real rows leave room to help: a minority class, and fewer real rows.

Added after ``gan-augment``, where 10 real rows per class already gave 0.93 of the Bayes 0.98 and neither sampler
moved it. Same known mixture (``gan_augment.draw``: 3 classes, each two Gaussians of std 0.6 on a circle of radius
3), classifier, test set (3000 balanced rows) and Bayes ceiling. Two settings per seed:
``imbalanced``: 20 real rows in classes 0 and 1, 4 in class 2 (the minority). Rows: ``real-only``;
``real+oversample`` (the minority's real rows repeated ×5: rebalancing without a GAN, the baseline augmentation
must beat to be worth it); ``real+plain`` / ``real+mh``: one GAN trained on all 44 rows (600 steps, the seed),
``gan_augment_ratio`` 4 and the synthetic rows of the minority class kept (16, so 20 + 20 + 20), plain draws or MH
over the 3-discriminator ensemble (chains of 20). ``few``: 4 real rows per class (balanced), ``real-only`` vs real
+ 3 synthetic rows per real row, plain or MH. ``acc`` = test accuracy (balanced test set, so the mean per-class
recall); ``minority`` = recall of class 2; ``modes`` = how many of the mixture's 6 Gaussians hold at least one
training row (real, or real + kept synthetic: does the GAN add a mode the real rows miss?); ``fidelity`` = the share
of kept synthetic rows the Bayes classifier gives their label. The claim (imbalanced): real + MH beats real-only
and real + plain in accuracy, in direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.quality.scenarios import gan_augment as base
from benchmarks.quality.scenarios._common import Context, summarize_rows

NAME = "gan-augment-imbalanced"
TITLE = "gan_augment with a minority class (20/20/4 rows) and with 4 rows per class"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("acc", "minority")
MINORITY = 2

FULL = dict(majority=20, minority=4, few=4, minority_ratio=4.0, few_ratio=3.0, gan_steps=600, chain_length=20,
            test_rows=3000, clf_steps=300)
SMOKE = dict(majority=4, minority=2, few=2, minority_ratio=1.0, few_ratio=1.0, gan_steps=5, chain_length=3,
             test_rows=30, clf_steps=5)


def imbalanced(majority: int, minority: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``majority`` rows of classes 0 and 1, ``minority`` of class 2, from the known mixture."""
    x, y = base.draw(majority, seed=seed)
    keep = (y != MINORITY) | (np.cumsum(y == MINORITY) <= minority)
    return x[keep], y[keep]


def modes_covered(x: np.ndarray, y: np.ndarray) -> int:
    """How many of the mixture's 6 Gaussians (2 per class) hold at least one training row: each row is put in the
    nearer of its own class's two components. A classifier cannot learn a mode no row comes from."""
    centres = base.centres()
    own = np.stack([y, y + base.CLASSES], axis=1)  # the two components of each row's class
    d2 = ((x[:, None, :] - centres[own]) ** 2).sum(-1)
    return len(set(own[np.arange(len(y)), d2.argmin(1)].tolist()))


def scores(x, y, test_x, test_y, steps: int, seed: int) -> dict[str, float]:
    acc, pred = base.classifier_accuracy(x, y, test_x, test_y, steps, seed, return_predictions=True)
    return {"acc": acc, "minority": float((pred[test_y == MINORITY] == MINORITY).mean()),
            "modes": float(modes_covered(x, y))}


def gan_rows(x, y, sampler: str, ratio: float, cfg: dict[str, Any], seed: int, keep_class: int | None = None):
    """Real + synthetic rows (only ``keep_class``'s synthetic rows when given), and the kept rows' fidelity."""
    ax, ay, synthetic, _ = base.augment_rows(x, y, sampler, ratio, cfg["gan_steps"], cfg["chain_length"], seed)
    keep = np.ones(len(ay), bool) if keep_class is None else ~synthetic | (ay == keep_class)
    kept_synthetic = keep & synthetic
    fidelity = float((base.bayes(ax[kept_synthetic]) == ay[kept_synthetic]).mean()) if kept_synthetic.any() else 0.0
    return ax[keep], ay[keep], fidelity


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    test_x, test_y = base.draw(cfg["test_rows"] // base.CLASSES, seed=10_000)
    per_seed: dict[str, list[dict[str, Any]]] = {"bayes": [{"acc": float((base.bayes(test_x) == test_y).mean())}]}

    def add(row: str, x, y, seed: int, **extra) -> None:
        per_seed.setdefault(row, []).append({**scores(x, y, test_x, test_y, cfg["clf_steps"], seed), **extra,
                                             "seed": seed, "rows": len(y)})

    for seed in ctx.seeds:
        x, y = imbalanced(cfg["majority"], cfg["minority"], seed)
        add("imbalanced/real-only", x, y, seed)
        repeat = int(round(cfg["majority"] / cfg["minority"]))
        minority = y == MINORITY
        add("imbalanced/real+oversample", np.concatenate([x[~minority]] + [x[minority]] * repeat),
            np.concatenate([y[~minority]] + [y[minority]] * repeat), seed)
        for sampler in ("plain", "mh"):
            ax, ay, fidelity = gan_rows(x, y, sampler, cfg["minority_ratio"], cfg, seed, keep_class=MINORITY)
            add(f"imbalanced/real+{sampler}", ax, ay, seed, fidelity=fidelity)
        x, y = base.draw(cfg["few"], seed=seed)
        add("few/real-only", x, y, seed)
        for sampler in ("plain", "mh"):
            ax, ay, fidelity = gan_rows(x, y, sampler, cfg["few_ratio"], cfg, seed)
            add(f"few/real+{sampler}", ax, ay, seed, fidelity=fidelity)
        ctx.log(f"  seed {seed} " + "  ".join(f"{k} acc {v[-1]['acc']:.3f}" for k, v in per_seed.items()
                                              if k != "bayes"))
    m, r = cfg["majority"], cfg["minority"]
    notes = {"bayes": "the known mixture's Bayes classifier (the ceiling)",
             "imbalanced/real-only": f"{m}/{m}/{r} real rows",
             "imbalanced/real+oversample": f"the minority's {r} rows repeated ×{int(round(m / r))}",
             "imbalanced/real+plain": f"+ {cfg['minority_ratio']:g} plain-GAN minority rows per minority row",
             "imbalanced/real+mh": f"+ {cfg['minority_ratio']:g} MH-GAN minority rows per minority row",
             "few/real-only": f"{cfg['few']} real rows per class",
             "few/real+plain": f"+ {cfg['few_ratio']:g} plain-GAN rows per real row",
             "few/real+mh": f"+ {cfg['few_ratio']:g} MH-GAN rows per real row"}
    return {"rows": summarize_rows(per_seed, ["acc", "minority", "modes", "fidelity"], notes),
            "metrics": [["acc", "test accuracy"], ["minority", "minority-class recall"],
                        ["modes", "mixture components (of 6) holding a training row, real or synthetic"],
                        ["fidelity", "synthetic rows the Bayes classifier gives their label"]],
            "config": cfg, "extra": {}}
