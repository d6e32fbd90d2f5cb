"""Model soups: a greedy soup of fine-tunes at several learning rates vs the best single one (Wortsman et al. 2022).

Per seed: full fine-tuning of the cached pre-trained decoder on the target task (``t:`` four-digit sums with
written steps; the seed's 256 training examples, 150 steps × 16, cosine schedule) once at each learning rate of
``lrs`` (3e-4, 1e-3, 2e-3, 3e-3: the range the full-fine-tuning learning-rate sweep of this harness spans, whose best
is 3e-3), every run from the same pre-trained weights with the same data order: the soup's ingredients, saved with
``save_pretrained``. Held-out scores are exact-match accuracies of greedy answers: on 100 validation prompts (disjoint
from train and test), which pick the best single ingredient and drive the greedy soup, and on 200 test prompts,
which every row reports. ``best-single``: the ingredient with the best validation accuracy (tie: the lower lr);
``greedy-soup``: ``ftplugins.tools.soup.greedy`` (ingredients sorted by validation accuracy, each added if the
soup's validation accuracy does not drop, the paper's ``>=``); ``uniform-soup``: ``ftplugins.tools.soup.uniform``
of every ingredient; ``lr-<lr>``: each ingredient alone. The claim: the greedy soup's test accuracy is at least the
best single one's (mean over seeds), as the paper finds; the greedy soup cannot be worse on validation by
construction, so the test set is what can show it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality import lr_sweep, tasks
from benchmarks.quality.evaluate import accuracy
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows

NAME = "soup"
TITLE = "Model soups: greedy soup of fine-tunes at several learning rates vs the best single fine-tune"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("target",)

FULL = dict(lrs=(3e-4, 1e-3, 2e-3, 3e-3), train_examples=256, steps=150, batch=16, eval_val=100, eval_target=200,
            max_new_tokens=None)
SMOKE = dict(lrs=(3e-4, 3e-3), train_examples=16, steps=2, batch=8, eval_val=4, eval_target=4, max_new_tokens=4)
TASK = "chain_steps"


def lr_name(lr: float) -> str:
    return f"lr-{lr:.1e}".replace(".0e", "e")  # lr-3e-03, lr-2.5e-03


def splits(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[int, list[dict]], list[dict], list[dict]]:
    """Per seed the train rows, then test and validation prompts disjoint from every seed's train rows and each
    other (shared by the soup scenarios)."""
    train = {seed: tasks.examples([TASK], cfg["train_examples"], seed=1_000 + seed) for seed in ctx.seeds}
    seen = {r["prompt"] for rows in train.values() for r in rows}
    test = tasks.held_out(TASK, cfg["eval_target"], seed=0, exclude=seen)
    val = [r for r in tasks.held_out(TASK, cfg["eval_val"], seed=lr_sweep.VAL_SEED,
                                     exclude=seen | {r["prompt"] for r in test})
           if r["prompt"] not in seen | {r["prompt"] for r in test}]
    return train, test, val


def run(ctx: Context, full: dict[str, Any] = FULL, smoke: dict[str, Any] = SMOKE) -> dict[str, Any]:
    """The scenario with the learning-rate grid of ``full`` (``smoke`` at smoke size)."""
    from transformers import LlamaForCausalLM

    from ftplugins.tools import soup

    cfg = smoke if ctx.smoke else full
    train, test, val = splits(ctx, cfg)

    def acc(model, rows):
        return accuracy(model, tokenizer, rows, tasks.TASKS[TASK], max_new_tokens=cfg["max_new_tokens"])

    pre, tokenizer = load(ctx.folder)
    per_seed: dict[str, list[dict[str, Any]]] = {"pretrained": [{"target": acc(pre, test), "val": acc(pre, val)}]}
    del pre
    for seed in ctx.seeds:
        data = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train[seed]]
        with tempfile.TemporaryDirectory(prefix="ftplugins-soup-scenario-") as work:
            paths, scores = [], {}
            for lr in cfg["lrs"]:
                model, _ = load(ctx.folder)
                trainer = sft(model, tokenizer, data, steps=cfg["steps"], lr=lr, seed=seed, batch_size=cfg["batch"])
                path = os.path.join(work, lr_name(lr))
                trainer.model.save_pretrained(path)
                tokenizer.save_pretrained(path)
                row = {"target": acc(trainer.model, test), "val": acc(trainer.model, val), "seed": seed, "lr": lr,
                       "final_loss": final_loss(trainer), "train_seconds": trainer.train_seconds}
                per_seed.setdefault(lr_name(lr), []).append(row)
                paths.append(path)
                scores[path] = row
                del trainer, model
            # best single: highest validation accuracy, ties to the lower lr (the order of ``lrs``)
            best = max(paths, key=lambda p: (scores[p]["val"], -paths.index(p)))
            per_seed.setdefault("best-single", []).append({**{k: scores[best][k] for k in ("target", "val", "lr")},
                                                           "seed": seed})
            greedy = soup.greedy(paths, os.path.join(work, "greedy"), lambda model: acc(model, val),
                                 load_model=LlamaForCausalLM.from_pretrained)
            greedy_model = LlamaForCausalLM.from_pretrained(greedy.output)
            per_seed.setdefault("greedy-soup", []).append({
                "target": acc(greedy_model, test), "val": greedy.soup_score, "seed": seed,
                "ingredients": len(greedy.chosen), "chosen": [os.path.basename(p) for p in greedy.chosen]})
            soup.uniform(paths, os.path.join(work, "uniform"))
            uniform_model = LlamaForCausalLM.from_pretrained(os.path.join(work, "uniform"))
            per_seed.setdefault("uniform-soup", []).append({"target": acc(uniform_model, test),
                                                            "val": acc(uniform_model, val), "seed": seed,
                                                            "ingredients": len(paths)})
        ctx.log(f"  seed {seed}: " + "  ".join(f"{lr_name(lr)} {per_seed[lr_name(lr)][-1]['target']:.3f}"
                                               f" (val {per_seed[lr_name(lr)][-1]['val']:.3f})" for lr in cfg["lrs"])
                + f"  | best single {per_seed['best-single'][-1]['target']:.3f}  greedy soup "
                  f"{per_seed['greedy-soup'][-1]['target']:.3f} ({'+'.join(per_seed['greedy-soup'][-1]['chosen'])})"
                  f"  uniform soup {per_seed['uniform-soup'][-1]['target']:.3f}")
    notes = {"pretrained": "the pre-trained decoder",
             "best-single": "the ingredient with the best validation accuracy (per seed)",
             "greedy-soup": "ftplugins.tools.soup.greedy over the ingredients, scored on the validation prompts",
             "uniform-soup": "ftplugins.tools.soup.uniform of every ingredient",
             **{lr_name(lr): f"full fine-tuning at lr {lr:g} (one ingredient)" for lr in cfg["lrs"]}}
    ordered = {k: per_seed[k] for k in ("pretrained", "best-single", "greedy-soup", "uniform-soup",
                                        *(lr_name(lr) for lr in cfg["lrs"]))}
    return {
        "rows": summarize_rows(ordered, ["target", "val", "ingredients"], notes),
        "metrics": [["target", "test target acc."], ["val", "validation acc."], ["ingredients", "ingredients"]],
        "config": {**cfg, "lrs": list(cfg["lrs"]), "val_examples": len(val)},
        "extra": {},
    }
