"""Composition, diagnosed: from a base that already knows the target script (the paper's θ0 is multilingual).

In ``composition`` and ``composition-long-language`` no row does the task in the target script (0.000 everywhere),
and the task-only delta cannot: θ0 never saw the target digits, so nothing in it relates ``l`` to ``1``. The
paper's θ0 (mBERT, XLM-R) is pre-trained on both languages; its task delta transfers zero-shot through shared
representations, and the language delta adds what the base knows too little of the target language. This scenario
gives ``composition`` that premise: its base θ0' is the pre-trained ``mid`` decoder after SFT on its pre-training
tasks in the source script (4,000 examples, all tasks) mixed with ``add`` / ``add_steps`` / ``count`` in the target
script at a quarter of that (1,000 examples: a low-resource language), 600 steps × 32 at lr 1e-3, seed 0 (cached,
like ``conjugate``'s bilingual model). Everything else is ``composition``'s, from θ0' instead of θ0: the language
delta (LT-SFT, 3,000 target-script examples of the same tasks, 300 + 300 steps, L1 0.1), the task delta
(source-script increment, 256 examples, 300 + 300 steps), the composition and the scores; ``pretrained`` is θ0'.
Its own claim variant, judged like ``composition``'s.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.scenarios import composition
from benchmarks.quality.scenarios._common import Context, cached_build, final_loss, load, sft, with_replay

NAME = "composition-bilingual"
TITLE = "LT-SFT composition from a base that knows the target script a little: θ0' + Δ_language + Δ_task"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

FULL_BASE = dict(source_examples=4_000, target_examples=1_000, steps=600, batch=32, lr=1e-3)
SMOKE_BASE = dict(source_examples=16, target_examples=8, steps=2, batch=8, lr=1e-3)


def bilingual_base(ctx: Context, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """θ0': the pre-trained decoder taught the target script on the number tasks (built now unless cached)."""
    recipe = {**cfg, "pretrained": ctx.key, "target_digits": composition.TARGET_DIGITS,
              "language_tasks": list(composition.LANGUAGE_TASKS), "format": 1}

    def build(folder: str) -> dict[str, Any]:
        ctx.log(f"composition-bilingual: building θ0' ({cfg['steps']} steps) ...")
        target = [composition.to_target(r) for r in tasks.examples(list(composition.LANGUAGE_TASKS),
                                                                     cfg["target_examples"], seed=32)]
        rows = with_replay(ctx, [{"prompt": r["prompt"], "completion": r["completion"]} for r in target],
                           cfg["source_examples"], seed=31)
        random.Random(33).shuffle(rows)
        model, tokenizer = load(ctx.folder)
        trainer = sft(model, tokenizer, rows, steps=cfg["steps"], lr=cfg["lr"], seed=0, batch_size=cfg["batch"])
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ctx.log(f"composition-bilingual: θ0' built in {trainer.train_seconds:.0f} s")
        return {"seconds": trainer.train_seconds, "final_loss": final_loss(trainer)}

    return cached_build(ctx, "bilingual-digits", recipe, build)


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE_BASE if ctx.smoke else FULL_BASE,
                    base_note="θ0': the pre-trained decoder after SFT on its tasks with add / add_steps / count also "
                              "in the target script (a quarter of the examples)")


def run_with(ctx: Context, base_cfg: dict[str, Any], base_note: str) -> dict[str, Any]:
    """``composition`` from the base ``base_cfg`` builds (``composition-bilingual-equal`` gives it more target)."""
    folder, record = bilingual_base(ctx, base_cfg)
    result = composition.run_with(ctx, composition.SMOKE if ctx.smoke else composition.FULL, base=folder,
                                  base_note=base_note)
    result["config"] = {**result["config"], "base": base_cfg}
    result["extra"] = {**result["extra"], "base": {"key": record["key"], "build_seconds": record["seconds"],
                                                   "final_loss": record["final_loss"],
                                                   "build_threads": record.get("torch_threads")}}
    return result
