"""Model soups of fine-tunes that stay close: one shared warm-up fine-tune, then four short continuations of it.

Added after ``soup`` and ``soup-narrow``, whose greedy soups kept one ingredient in every seed (150 full
fine-tuning steps at 2e-3 – 3e-3 from the pre-trained decoder move the weights so far apart that averages break).
The paper's regime is fine-tunes of one model that stay in one basin; here that model is a shared **warm-up**:
per seed, full fine-tuning of the cached pre-trained decoder on the target task (``t:``, the seed's 256 training
examples, ``warmup_steps`` × 16 at lr 3e-3, the best rate of the full-fine-tuning sweep, cosine schedule). The four
ingredients continue from the warm-up for ``steps`` × 16 each at the low, neighbouring learning rates ``lrs``, each
with its own data order (shuffling seed ``100 * seed + i``), saved with ``save_pretrained``. Scoring as in ``soup``:
exact match of greedy answers on ``eval_val`` validation prompts (disjoint from train and test; they pick the best
single ingredient and drive the greedy soup) and on ``eval_target`` test prompts (every row). ``warmup``: the shared
start alone; ``best-single``: the ingredient with the best validation accuracy (tie: the lower lr);
``greedy-soup``: ``ftplugins.tools.soup.greedy`` (best first, each added if validation accuracy does not drop), with
``ingredients`` the number it kept (1 = no soup, just the best single model); ``uniform-soup``: the mean of all
four. The claim: greedy soup >= best single on test accuracy (mean over seeds).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.evaluate import accuracy
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows
from benchmarks.quality.scenarios.soup import TASK, splits

NAME = "soup-close"
TITLE = "Model soups: greedy soup of short low-lr continuations of one shared warm-up fine-tune vs the best single one"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("target",)

FULL = dict(warmup_lr=3e-3, warmup_steps=100, lrs=(1e-4, 2e-4, 3e-4, 4e-4), steps=40, train_examples=256, batch=16,
            eval_val=80, eval_target=150, max_new_tokens=None)
SMOKE = dict(warmup_lr=3e-3, warmup_steps=2, lrs=(1e-4, 3e-4), steps=2, train_examples=16, batch=8, eval_val=4,
             eval_target=4, max_new_tokens=4)


def lr_name(lr: float) -> str:
    return f"ft-{lr:.1e}".replace(".0e", "e")  # ft-1e-04


def ingredient_names(lrs) -> list[str]:
    """One row name per ingredient: its lr, plus its data order's index when several share an lr."""
    plain = [lr_name(lr) for lr in lrs]
    return [name if plain.count(name) == 1 else f"{name}-order{i}" for i, name in enumerate(plain)]


def run(ctx: Context, full: dict[str, Any] = FULL, smoke: dict[str, Any] = SMOKE) -> dict[str, Any]:
    """The scenario with the continuation grid of ``full`` (``smoke`` at smoke size)."""
    from transformers import LlamaForCausalLM

    from ftplugins.tools import soup

    cfg = smoke if ctx.smoke else full
    names = ingredient_names(cfg["lrs"])
    train, test, val = splits(ctx, cfg)

    def acc(model, rows):
        return accuracy(model, tokenizer, rows, tasks.TASKS[TASK], max_new_tokens=cfg["max_new_tokens"])

    per_seed: dict[str, list[dict[str, Any]]] = {}
    tokenizer = None
    for seed in ctx.seeds:
        data = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train[seed]]
        with tempfile.TemporaryDirectory(prefix="ftplugins-soup-close-") as work:
            model, tokenizer = load(ctx.folder)
            trainer = sft(model, tokenizer, data, steps=cfg["warmup_steps"], lr=cfg["warmup_lr"], seed=seed,
                          batch_size=cfg["batch"])
            start = os.path.join(work, "warmup")
            trainer.model.save_pretrained(start)
            tokenizer.save_pretrained(start)
            per_seed.setdefault("warmup", []).append({"target": acc(trainer.model, test),
                                                      "val": acc(trainer.model, val), "seed": seed,
                                                      "final_loss": final_loss(trainer),
                                                      "train_seconds": trainer.train_seconds})
            del trainer, model
            paths = []
            for i, (lr, name) in enumerate(zip(cfg["lrs"], names)):
                model, _ = load(start)
                trainer = sft(model, tokenizer, data, steps=cfg["steps"], lr=lr, seed=100 * seed + i,
                              batch_size=cfg["batch"])
                path = os.path.join(work, name)
                trainer.model.save_pretrained(path)
                tokenizer.save_pretrained(path)
                per_seed.setdefault(name, []).append({
                    "target": acc(trainer.model, test), "seed": seed, "lr": lr, "data_seed": 100 * seed + i,
                    "final_loss": final_loss(trainer), "train_seconds": trainer.train_seconds})
                paths.append(path)
                del trainer, model
            # the greedy soup scores each ingredient alone on the validation prompts first: reuse those scores
            greedy = soup.greedy(paths, os.path.join(work, "greedy"), lambda model: acc(model, val),
                                 load_model=LlamaForCausalLM.from_pretrained)
            for name, path in zip(names, paths):
                per_seed[name][-1]["val"] = greedy.scores[path]
            best = max(paths, key=lambda p: (greedy.scores[p], -paths.index(p)))
            best_row = per_seed[names[paths.index(best)]][-1]
            per_seed.setdefault("best-single", []).append({k: best_row[k] for k in ("target", "val", "lr", "seed")})
            greedy_model = LlamaForCausalLM.from_pretrained(greedy.output)
            per_seed.setdefault("greedy-soup", []).append({
                "target": acc(greedy_model, test), "val": greedy.soup_score, "seed": seed,
                "ingredients": len(greedy.chosen), "chosen": [os.path.basename(p) for p in greedy.chosen]})
            soup.uniform(paths, os.path.join(work, "uniform"))
            uniform_model = LlamaForCausalLM.from_pretrained(os.path.join(work, "uniform"))
            per_seed.setdefault("uniform-soup", []).append({"target": acc(uniform_model, test),
                                                            "val": acc(uniform_model, val), "seed": seed,
                                                            "ingredients": len(paths)})
        last = {name: rows[-1] for name, rows in per_seed.items()}
        ctx.log(f"  seed {seed}: warmup {last['warmup']['target']:.3f} (val {last['warmup']['val']:.3f})  "
                + "  ".join(f"{name} {last[name]['target']:.3f} (val {last[name]['val']:.3f})" for name in names)
                + f"  | best single {last['best-single']['target']:.3f}"
                  f"  greedy soup {last['greedy-soup']['target']:.3f} ({'+'.join(last['greedy-soup']['chosen'])})"
                  f"  uniform soup {last['uniform-soup']['target']:.3f}"
                  f" (val {last['uniform-soup']['val']:.3f})")
    notes = {"warmup": f"the shared start: full fine-tuning, {cfg['warmup_steps']} steps at lr {cfg['warmup_lr']:g}",
             "best-single": "the ingredient with the best validation accuracy (per seed)",
             "greedy-soup": "ftplugins.tools.soup.greedy over the ingredients, scored on the validation prompts",
             "uniform-soup": "ftplugins.tools.soup.uniform of every ingredient",
             **{name: f"warm-up + {cfg['steps']} steps at lr {lr:g}, own data order (one ingredient)"
                for lr, name in zip(cfg["lrs"], names)}}
    ordered = {k: per_seed[k] for k in ("warmup", "best-single", "greedy-soup", "uniform-soup", *names)}
    return {
        "rows": summarize_rows(ordered, ["target", "val", "ingredients"], notes),
        "metrics": [["target", "test target acc."], ["val", "validation acc."], ["ingredients", "ingredients"]],
        "config": {**cfg, "lrs": list(cfg["lrs"]), "val_examples": len(val)},
        "extra": {},
    }
