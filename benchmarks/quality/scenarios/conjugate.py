"""Conjugate prompting: a capability fine-tuning suppressed, asked for in another "language" (Kotha et al., ICLR 2024).

The capability is the pre-training task ``reverse`` (``r:<word>=`` → the word reversed). The transform is a Caesar
shift of the letters by 12 (``ftplugins.tools.conjugate.cipher(12)``, applied to the whole prompt, the answer mapped
back before judging; digits and punctuation untouched). Shift 12, not ROT13, because it maps no task tag onto
another task's tag (ROT13 swaps ``a:`` and ``n:``, the add and count tasks).

* **pretrained**: the cached pre-trained decoder. It never saw shifted text, so it has no transform-robust
  capability of its own (its conjugate accuracy measures that).
* **bilingual**: the pre-trained decoder after SFT on its pre-training tasks in both forms, plain and shifted
  (4,000 examples each, 600 steps × 32, lr 1e-3; cached): the analogue of a model pre-trained on several languages,
  which the paper's mechanism needs (the capability exists in the other language before fine-tuning).
* **finetuned** (per seed): the bilingual model fine-tuned on 256 plain ``r:`` prompts answered with the word
  itself, i.e. an answer format that overwrites the reverse task (150 steps × 16, lr 3e-4, full fine-tuning), the
  paper's setting in miniature: fine-tuning data in one "language" changes which task the model infers there.

Each model answers 200 held-out reverse prompts (greedy; ``ftplugins.tools.conjugate.conjugate_eval``, exact
match): ``<model>/original`` on the prompts as they are, ``<model>/conjugate`` on their shifted form with the answer
shifted back. ``reverse``: accuracy; ``copy``: share of answers that are the word itself (the fine-tuned format).
The claim: conjugate prompting recovers part of what fine-tuning suppressed, i.e. the fine-tuned model's reverse
accuracy on conjugate prompts is higher than on the original ones (means over seeds). ``finetuned-short`` (added
after the first run, which did not reproduce the claim; shown, not judged): the same fine-tuning stopped at 30
steps, to see whether the conjugate form keeps the capability longer than the plain one before the override
spreads to it.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.scenarios._common import Context, cached_build, final_loss, load, sft, summarize_rows

NAME = "conjugate"
TITLE = "Conjugate prompting: the reverse task after fine-tuning overwrote its answer format, asked in a cipher"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("reverse", "copy")

SHIFT = 12
TASK = "reverse"
FULL = dict(bilingual_examples=4_000, bilingual_steps=600, bilingual_batch=32, bilingual_lr=1e-3,
            ft_examples=256, ft_steps=150, ft_short_steps=30, ft_batch=16, ft_lr=3e-4, eval_examples=200,
            max_new_tokens=None)
SMOKE = dict(bilingual_examples=32, bilingual_steps=2, bilingual_batch=8, bilingual_lr=1e-3,
             ft_examples=16, ft_steps=2, ft_short_steps=1, ft_batch=8, ft_lr=3e-4, eval_examples=4, max_new_tokens=4)


def transform():
    from ftplugins.tools.conjugate import cipher

    return cipher(SHIFT)


def bilingual_model(ctx: Context, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The pre-trained decoder trained on its tasks in plain and shifted form (built now unless cached)."""
    recipe = {k: cfg[k] for k in ("bilingual_examples", "bilingual_steps", "bilingual_batch", "bilingual_lr")}
    recipe.update(pretrained=ctx.key, shift=SHIFT, format=1)

    def build(folder: str) -> dict[str, Any]:
        ctx.log(f"conjugate: building the bilingual model ({cfg['bilingual_steps']} steps) ...")
        shifted = transform()
        plain = tasks.examples(list(ctx.pretrain.tasks), cfg["bilingual_examples"], seed=21)
        other = [{"prompt": shifted.encode(r["prompt"]), "completion": shifted.encode(r["completion"])}
                 for r in tasks.examples(list(ctx.pretrain.tasks), cfg["bilingual_examples"], seed=22)]
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in plain] + other
        random.Random(23).shuffle(rows)
        model, tokenizer = load(ctx.folder)
        trainer = sft(model, tokenizer, rows, steps=cfg["bilingual_steps"], lr=cfg["bilingual_lr"], seed=0,
                      batch_size=cfg["bilingual_batch"])
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ctx.log(f"conjugate: bilingual model built in {trainer.train_seconds:.0f} s")
        return {"seconds": trainer.train_seconds, "final_loss": final_loss(trainer),
                "prompts": [r["prompt"] for r in plain]}

    return cached_build(ctx, "bilingual", recipe, build)


def overwrite_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Plain reverse prompts answered with the word itself (the format fine-tuning imposes)."""
    rng = random.Random(seed)
    rows = [tasks.TASKS[TASK].example(rng) for _ in range(n)]
    return [{"prompt": r["prompt"], "completion": r["prompt"][2:-1]} for r in rows]


def scores(model, tokenizer, rows: list[dict[str, str]], cfg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"original": {...}, "conjugate": {...}}``: reverse accuracy and the share of copied words, per form."""
    from ftplugins.tools.conjugate import conjugate_eval

    budget = min(tasks.TASKS[TASK].max_new_tokens, cfg["max_new_tokens"] or 99)
    result = conjugate_eval({"model": model}, tokenizer, rows, [transform()], judge="exact", max_new_tokens=budget,
                            batch_size=128)
    out = {}
    for form, name in (("original", "identity"), ("conjugate", transform().name)):
        records = [r for r in result["rows"] if r["transform"] == name]
        copied = sum(rec["answer"] == row["prompt"][2:-1] for rec, row in zip(records, rows))
        out[form] = {"reverse": result["metrics"][f"model/{name}"], "copy": copied / len(rows),
                     "samples": [f"{rec['prompt']}{rec['raw_answer']}" for rec in records[:3]]}
    return out


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    folder, record = bilingual_model(ctx, cfg)
    train = {seed: overwrite_rows(cfg["ft_examples"], seed=4_000 + seed) for seed in ctx.seeds}
    seen = ({r["prompt"] for r in tasks.examples(list(ctx.pretrain.tasks), ctx.pretrain.examples, ctx.pretrain.seed)}
            | set(record["prompts"]) | {r["prompt"] for rows in train.values() for r in rows})
    test = [{"prompt": r["prompt"], "answer": r["answer"]}
            for r in tasks.held_out(TASK, cfg["eval_examples"], seed=0, exclude=seen)]

    per_seed: dict[str, list[dict[str, Any]]] = {}

    def record_scores(name: str, model, tokenizer, **extra):
        for form, values in scores(model, tokenizer, test, cfg).items():
            per_seed.setdefault(f"{name}/{form}", []).append({**values, **extra})

    for name, path in (("pretrained", ctx.folder), ("bilingual", folder)):
        model, tokenizer = load(path)
        record_scores(name, model, tokenizer)
        ctx.log(f"  {name:<10} reverse: original {per_seed[f'{name}/original'][0]['reverse']:.3f}, conjugate "
                f"{per_seed[f'{name}/conjugate'][0]['reverse']:.3f}")
        del model
    for seed in ctx.seeds:
        for name, steps in (("finetuned", cfg["ft_steps"]), ("finetuned-short", cfg["ft_short_steps"])):
            model, tokenizer = load(folder)
            trainer = sft(model, tokenizer, train[seed], steps=steps, lr=cfg["ft_lr"], seed=seed,
                          batch_size=cfg["ft_batch"])
            record_scores(name, trainer.model, tokenizer, seed=seed, final_loss=final_loss(trainer),
                          train_seconds=trainer.train_seconds)
            o, c = per_seed[f"{name}/original"][-1], per_seed[f"{name}/conjugate"][-1]
            ctx.log(f"  seed {seed} {name} reverse: original {o['reverse']:.3f} (copies {o['copy']:.3f}), "
                    f"conjugate {c['reverse']:.3f} (copies {c['copy']:.3f})  ({trainer.train_seconds:.0f} s)")
    notes = {"pretrained/original": "the pre-trained decoder, plain prompts",
             "pretrained/conjugate": "the pre-trained decoder, shifted prompts (never seen in pre-training)",
             "bilingual/original": "pre-trained + its tasks in plain and shifted form, plain prompts",
             "bilingual/conjugate": "the bilingual model, shifted prompts, answers shifted back",
             "finetuned/original": "bilingual + SFT on plain r: prompts answered by copying, plain prompts",
             "finetuned/conjugate": "the fine-tuned model, shifted prompts, answers shifted back",
             "finetuned-short/original": "the same fine-tuning stopped at 30 steps (added after the first run), plain",
             "finetuned-short/conjugate": "the 30-step fine-tune, shifted prompts, answers shifted back"}
    return {
        "rows": summarize_rows(per_seed, ["reverse", "copy"], notes),
        "metrics": [["reverse", "reverse acc."], ["copy", "answers = the word (fine-tuned format)"]],
        "config": {**cfg, "shift": SHIFT, "task": TASK, "transform": transform().name},
        "extra": {"bilingual_model": {"folder": folder, "key": record["key"], "build_seconds": record["seconds"],
                                      "build_threads": record.get("torch_threads"),
                                      "final_loss": record["final_loss"]}},
    }
