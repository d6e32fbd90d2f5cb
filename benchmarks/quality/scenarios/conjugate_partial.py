"""Conjugate prompting after a fine-tune that suppresses the capability only partly (Kotha et al., ICLR 2024).

Added after ``conjugate``, where 150 steps of fine-tuning broke ``reverse`` in both forms, so there was nothing left
to recover. Same capability, cipher (``ftplugins.tools.conjugate.cipher(12)``), overwrite data (plain ``r:`` prompts
answered with the word itself), held-out prompts and scoring as ``conjugate``, starting from the same cached
bilingual model (same recipe, same cache key). The fine-tune is lighter: ``after`` (the claim's setting, fixed
before the run) trains ``light_steps`` × 16 at lr ``light_lr`` on the 256 overwrite rows; ``mixed-after`` (shown,
not judged) trains ``mixed_steps`` × 16 at lr ``mixed_lr`` on data where only a quarter of the rows conflict (64
overwrite rows among 192 plain rows of the four other pre-training tasks). Rows: ``before/plain`` and
``before/conjugate`` (the bilingual model), ``<setting>/plain`` (plain prompts after fine-tuning) and
``<setting>/conjugate`` (shifted prompts, answer shifted back). The claim: ``after/conjugate`` reverse accuracy >
``after/plain`` (means over seeds), i.e. the cipher recovers part of what the fine-tune suppressed in plain form.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.scenarios import conjugate
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows

NAME = "conjugate-partial"
TITLE = "Conjugate prompting after a light fine-tune that suppresses the reverse task only partly"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("reverse", "copy")

# bilingual_* must stay equal to conjugate.FULL's: they are the cached bilingual model's recipe
FULL = {**{k: v for k, v in conjugate.FULL.items() if k.startswith("bilingual_")},
        "ft_examples": 256, "ft_batch": 16, "light_steps": 30, "light_lr": 1e-4, "mixed_steps": 60, "mixed_lr": 3e-4,
        "mixed_share": 0.25, "eval_examples": 200, "max_new_tokens": None}
SMOKE = {**{k: v for k, v in conjugate.SMOKE.items() if k.startswith("bilingual_")},
         "ft_examples": 16, "ft_batch": 8, "light_steps": 1, "light_lr": 1e-4, "mixed_steps": 1, "mixed_lr": 3e-4,
         "mixed_share": 0.25, "eval_examples": 4, "max_new_tokens": 4}


def mixed_rows(ctx: Context, n: int, share: float, seed: int) -> list[dict[str, str]]:
    """``n`` rows: ``share`` of them overwrite rows, the rest plain rows of the other pre-training tasks."""
    conflicting = conjugate.overwrite_rows(round(n * share), seed=4_000 + seed)
    others = [t for t in ctx.pretrain.tasks if t != conjugate.TASK]
    plain = [{"prompt": r["prompt"], "completion": r["completion"]}
             for r in tasks.examples(others, n - len(conflicting), seed=5_000 + seed)]
    rows = conflicting + plain
    random.Random(seed).shuffle(rows)
    return rows


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    folder, record = conjugate.bilingual_model(ctx, cfg)
    settings = {
        "after": ({seed: conjugate.overwrite_rows(cfg["ft_examples"], seed=4_000 + seed) for seed in ctx.seeds},
                  cfg["light_steps"], cfg["light_lr"]),
        "mixed-after": ({seed: mixed_rows(ctx, cfg["ft_examples"], cfg["mixed_share"], seed) for seed in ctx.seeds},
                        cfg["mixed_steps"], cfg["mixed_lr"]),
    }
    seen = ({r["prompt"] for r in tasks.examples(list(ctx.pretrain.tasks), ctx.pretrain.examples, ctx.pretrain.seed)}
            | set(record["prompts"])
            | {r["prompt"] for data, _, _ in settings.values() for rows in data.values() for r in rows})
    test = [{"prompt": r["prompt"], "answer": r["answer"]}
            for r in tasks.held_out(conjugate.TASK, cfg["eval_examples"], seed=0, exclude=seen)]
    per_seed: dict[str, list[dict[str, Any]]] = {}

    def record_scores(name: str, model, tokenizer, **extra):
        for form, values in conjugate.scores(model, tokenizer, test, cfg).items():
            per_seed.setdefault(f"{name}/{'plain' if form == 'original' else form}", []).append({**values, **extra})

    model, tokenizer = load(folder)
    record_scores("before", model, tokenizer)
    ctx.log(f"  before reverse: plain {per_seed['before/plain'][0]['reverse']:.3f}, conjugate "
            f"{per_seed['before/conjugate'][0]['reverse']:.3f}")
    del model
    for seed in ctx.seeds:
        for name, (data, steps, lr) in settings.items():
            model, tokenizer = load(folder)
            trainer = sft(model, tokenizer, data[seed], steps=steps, lr=lr, seed=seed, batch_size=cfg["ft_batch"])
            record_scores(name, trainer.model, tokenizer, seed=seed, final_loss=final_loss(trainer),
                          train_seconds=trainer.train_seconds)
            p, c = per_seed[f"{name}/plain"][-1], per_seed[f"{name}/conjugate"][-1]
            ctx.log(f"  seed {seed} {name} reverse: plain {p['reverse']:.3f} (copies {p['copy']:.3f}), "
                    f"conjugate {c['reverse']:.3f} (copies {c['copy']:.3f})  ({trainer.train_seconds:.0f} s)")
            del trainer, model
    light = f"{cfg['light_steps']} steps at lr {cfg['light_lr']:g} on plain r: prompts answered by copying"
    mixed = (f"{cfg['mixed_steps']} steps at lr {cfg['mixed_lr']:g}, {cfg['mixed_share']:.0%} of rows overwrite "
             "rows, the rest plain rows of the other pre-training tasks")
    notes = {"before/plain": "the cached bilingual model (as in conjugate), plain prompts",
             "before/conjugate": "the bilingual model, shifted prompts, answers shifted back",
             "after/plain": f"bilingual + {light}; plain prompts",
             "after/conjugate": "the same fine-tune, shifted prompts, answers shifted back",
             "mixed-after/plain": f"bilingual + {mixed}; plain prompts (shown, not judged)",
             "mixed-after/conjugate": "the mixed fine-tune, shifted prompts, answers shifted back"}
    return {
        "rows": summarize_rows(per_seed, ["reverse", "copy"], notes),
        "metrics": [["reverse", "reverse acc."], ["copy", "answers = the word (fine-tuned format)"]],
        "config": {**cfg, "shift": conjugate.SHIFT, "task": conjugate.TASK, "transform": conjugate.transform().name},
        "extra": {"bilingual_model": {"folder": folder, "key": record["key"], "build_seconds": record["seconds"],
                                      "build_threads": record.get("torch_threads"),
                                      "final_loss": record["final_loss"]}},
    }
