"""gan_augment (MhERGAN-style): few-shot tabular classification with GAN-augmented training rows.

A known mixture: 3 classes in 2-D, each an equal mixture of two Gaussians (std 0.6) whose centres lie on a circle of
radius 3, the six centres alternating between classes, so the classes are not linearly separable. Per seed, 10 real
rows per class; the classifier (an MLP 2-32-32-3, full-batch Adam at 1e-2 for 300 steps, weight decay 1e-3) is
trained on the 30 real rows alone (``real-only``), on real + 3 synthetic rows per real row from the same GAN drawn
plainly (``real+plain``: ``gan_augment_sampler=plain``), and on real + as many rows drawn by MH over the calibrated
discriminator ensemble (``real+mh``: the default sampler, 3 discriminators, chains of 20 proposals). Both synthetic
sets come from one GAN (same seed, 600 steps), through ``ftplugins.methods.gan_augment.augment`` — the function the
plugin's ``transform_dataset`` calls. ``acc`` = accuracy on 3000 test rows from the mixture; ``fidelity``
(diagnostic) = the share of synthetic rows that the Bayes classifier of the known mixture assigns to their label;
the ``bayes`` row is that classifier's test accuracy (the ceiling).
The claim: real + MH beats real-only and real + plain, in direction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks.quality.scenarios._common import Context, fit_full_batch, summarize_rows

NAME = "gan-augment"
TITLE = "gan_augment: few-shot tabular classifier on real rows vs real + plain-GAN rows vs real + MH-GAN rows"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("acc", "fidelity")
CLASSES = 3
STD = 0.6

FULL = dict(real_per_class=10, ratio=3.0, gan_steps=600, chain_length=20, test_rows=3000, clf_steps=300)
SMOKE = dict(real_per_class=4, ratio=1.0, gan_steps=5, chain_length=3, test_rows=30, clf_steps=5)


def centres() -> np.ndarray:
    """Six centres on a circle; centre i belongs to class i % 3."""
    angles = np.arange(2 * CLASSES) * 2 * math.pi / (2 * CLASSES)
    return 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), n)
    component = labels + CLASSES * rng.integers(0, 2, len(labels))
    return centres()[component] + STD * rng.normal(size=(len(labels), 2)), labels


def bayes(x: np.ndarray) -> np.ndarray:
    """The known mixture's Bayes classifier (equal priors, equal isotropic components)."""
    d2 = ((x[:, None, :] - centres()[None]) ** 2).sum(-1)
    density = np.exp(-d2 / (2 * STD**2))
    return (density[:, :CLASSES] + density[:, CLASSES:]).argmax(1)


def classifier_accuracy(x, y, test_x, test_y, steps: int, seed: int, return_predictions: bool = False, *,
                        hidden: int = 32, weight_decay: float = 1e-3, classes: int = CLASSES):
    """Test accuracy of the MLP (d-hidden-hidden-classes) trained on ``(x, y)``; with ``return_predictions``,
    ``(accuracy, predictions)``. The defaults are this scenario's classifier; other scenarios widen it."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
    fit_full_batch(model, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long), steps,
                   lr=1e-2, weight_decay=weight_decay)
    with torch.no_grad():
        pred = model(torch.as_tensor(test_x, dtype=torch.float32)).argmax(1).numpy()
    accuracy = float((pred == test_y).mean())
    return (accuracy, pred) if return_predictions else accuracy


def augment_rows(x: np.ndarray, y: np.ndarray, sampler: str, ratio: float, gan_steps: int, chain_length: int,
                 seed: int):
    """Real + synthetic rows through the plugin's own ``augment`` (features as columns x0, x1, ...):
    ``(features, labels, synthetic mask, report)``, real rows first."""
    from datasets import Dataset

    from ftplugins.methods.gan_augment import GanAugmentOptions, augment

    columns = {f"x{j}": x[:, j].tolist() for j in range(x.shape[1])}
    real = Dataset.from_dict({**columns, "label": y.tolist()})
    opts = GanAugmentOptions(gan_augment_sampler=sampler, gan_augment_ratio=ratio, gan_augment_steps=gan_steps,
                             gan_augment_chain_length=chain_length, gan_augment_seed=seed)
    augmented, report = augment(real, opts)
    ax = np.stack([augmented[name] for name in columns], axis=1)
    return ax, np.asarray(augmented["label"]), np.asarray(augmented["synthetic"]), report


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    test_x, test_y = draw(cfg["test_rows"] // CLASSES, seed=10_000)
    per_seed: dict[str, list[dict[str, Any]]] = {"bayes": [{"acc": float((bayes(test_x) == test_y).mean())}]}
    for seed in ctx.seeds:
        x, y = draw(cfg["real_per_class"], seed=seed)
        per_seed.setdefault("real-only", []).append(
            {"acc": classifier_accuracy(x, y, test_x, test_y, cfg["clf_steps"], seed), "seed": seed})
        for row, sampler in (("real+plain", "plain"), ("real+mh", "mh")):
            ax, ay, synthetic, report = augment_rows(x, y, sampler, cfg["ratio"], cfg["gan_steps"],
                                                     cfg["chain_length"], seed)
            per_seed.setdefault(row, []).append({
                "acc": classifier_accuracy(ax, ay, test_x, test_y, cfg["clf_steps"], seed),
                "fidelity": float((bayes(ax[synthetic]) == ay[synthetic]).mean()),
                "acceptance": report["mh_acceptance_rate"], "seed": seed})
        ctx.log(f"  seed {seed} " + "  ".join(f"{k} acc {v[-1]['acc']:.3f}" for k, v in per_seed.items()))
    notes = {"bayes": "the known mixture's Bayes classifier (the ceiling)",
             "real-only": f"{cfg['real_per_class']} real rows per class",
             "real+plain": f"real + {cfg['ratio']:g} plain-GAN rows per real row",
             "real+mh": f"real + {cfg['ratio']:g} MH-GAN rows per real row (3 discriminators, chains of "
                        f"{cfg['chain_length']})"}
    return {
        "rows": summarize_rows(per_seed, ["acc", "fidelity"], notes),
        "metrics": [["acc", "test accuracy"], ["fidelity", "synthetic rows the Bayes classifier gives their label"]],
        "config": cfg,
        "extra": {},
    }
