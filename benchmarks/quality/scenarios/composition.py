"""Composition: LT-SFT "language" and task sparse deltas added onto the base (Ansell et al. 2022).

The paper's recipe (cross-lingual transfer): a language SFT Δ_L per language (trained on that
language's unlabelled text), a task SFT Δ_T trained on source-language task data on top of the
source language's SFT, and zero-shot transfer to a target language as θ0 + Δ_L(target) + Δ_T.

Toy analogue on the character-level decoder:

* **Source "language"**: the pre-training script (digits ``0-9``). The pre-trained model is the
  source-language model, so the source language SFT is omitted (Δ_L(source) = 0).
* **Target "language"**: the same arithmetic written with other digit symbols (``0-9`` →
  ``k-t``; tags and operators unchanged). Its "unlabelled text" is the pre-training tasks that use
  digits (``a:`` addition, ``s:`` column addition with steps, ``n:`` counting) written in it.
* **Task**: a task the pre-trained model has never seen, digit increment ``i:4821=`` → ``5932``
  (every digit + 1 mod 10), trained in the source language only (256 examples).
* **Deltas**: LT-SFT (``compose(SFTTrainer, ["lt_sft"])``), 5% of the entries each (the output head
  dense, as the library does), phase 1 = phase 2 steps. Language SFT: 3,000 target-language
  examples, 300 + 300 steps × 16, lr 3e-3, L1 λ = 0.1 (the reference's language setting); task
  SFT: 300 + 300 steps × 16, lr 3e-3, λ = 0. Both start from θ0; composed with
  ``ftplugins.sparse.delta.apply_delta(model, Δ_L, Δ_T)`` (summed, order-free). Both deltas change
  the shared LM head densely; in the paper the language SFT's MLM head is not part of the task model,
  so ``composed-task-head`` also composes Δ_L without its head change. (A first run with
  lr 1e-3 and 150 + 150 task steps learned too little to judge: task-only source-script increment
  0.04, language-only target-script addition 0.045 at seed 0.)
* **Scores**: exact match on 200 held-out increment prompts written in the target language (the
  zero-shot transfer the claim is about) and in the source language; and target-language addition
  (``a:`` in ``k-t`` digits; does the language delta carry the language?). Claim: the composition
  beats each delta alone on target-language increment.
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.evaluate import accuracy
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows

NAME = "composition"
TITLE = "LT-SFT composition: θ0 + Δ_language(target script) + Δ_task(source script)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

TARGET_DIGITS = "klmnopqrst"
TRANSLATE = str.maketrans("0123456789", TARGET_DIGITS)
LANGUAGE_TASKS = ("add", "add_steps", "count")
HEAD = "lm_head.weight"


def increment_task(rng: random.Random) -> tuple[str, str]:
    digits = "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))
    return digits, "".join(str((int(d) + 1) % 10) for d in digits)


INCREMENT = tasks.Task("increment", "i", increment_task, 7)
ADD_TARGET = tasks.Task("add_target", "a", tasks.add_task, 5)

FULL = dict(language_examples=3_000, language_steps=300, task_examples=256, task_steps=300, batch=16, lr=3e-3,
            proportion=0.05, language_l1=0.1, eval_n=200, max_new_tokens=None)
SMOKE = dict(language_examples=32, language_steps=2, task_examples=16, task_steps=2, batch=8, lr=3e-3,
             proportion=0.05, language_l1=0.1, eval_n=4, max_new_tokens=4)


def to_target(row: dict[str, str]) -> dict[str, str]:
    """A row in the target script: the text after ``<tag>:`` with its digits replaced."""
    tag, body = row["prompt"].split(":", 1)
    return {**row, "prompt": f"{tag}:{body.translate(TRANSLATE)}", "completion": row["completion"].translate(TRANSLATE),
            "answer": row["answer"].translate(TRANSLATE)}


def task_rows(task: tasks.Task, n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, str]]:
    rng, out, seen = random.Random(seed), [], set(exclude or ())
    for _ in range(200 * n):
        if len(out) == n:
            break
        row = task.example(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out


def lt_sft_delta(ctx: Context, rows: list[dict[str, str]], *, steps: int, cfg: dict[str, Any], seed: int, l1: float,
                 base: str | None = None):
    """An LT-SFT delta trained from ``base`` (default: the pre-trained decoder) on ``rows``, and its trainer."""
    from ftplugins.sparse.delta import load_delta

    model, tokenizer = load(base or ctx.folder)
    data = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    with tempfile.TemporaryDirectory(prefix="ftplugins-ltsft-") as out_dir:
        trainer = sft(model, tokenizer, data, steps=steps, lr=cfg["lr"], seed=seed, batch_size=cfg["batch"],
                      plugins=("lt_sft",), keep_dir=out_dir,
                      options={"lt_sft_proportion": cfg["proportion"], "lt_sft_l1": l1})
        delta = load_delta(os.path.join(out_dir, "sparse_delta.safetensors"))
    return delta, trainer


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE if ctx.smoke else FULL)


def run_with(ctx: Context, cfg: dict[str, Any], base: str | None = None,
             base_note: str = "θ0, the pre-trained decoder") -> dict[str, Any]:
    """The scenario at ``cfg`` (``composition-long-language`` gives the language delta a larger budget) from
    ``base`` (default: the pre-trained decoder; ``composition-bilingual`` passes one that knows both scripts)."""
    from ftplugins.sparse.delta import SparseDelta, apply_delta

    base = base or ctx.folder

    task_train = {seed: task_rows(INCREMENT, cfg["task_examples"], seed=500 + seed) for seed in ctx.seeds}
    seen = {r["prompt"] for rows in task_train.values() for r in rows}
    test_source = task_rows(INCREMENT, cfg["eval_n"], seed=600, exclude=seen)
    test_target = [to_target(r) for r in test_source]
    add_target = [to_target(r) for r in tasks.held_out("add", cfg["eval_n"], seed=0)]

    def scores(model, tokenizer) -> dict[str, float]:
        cap = cfg["max_new_tokens"]
        return {"target_lang": accuracy(model, tokenizer, test_target, INCREMENT, max_new_tokens=cap),
                "source_lang": accuracy(model, tokenizer, test_source, INCREMENT, max_new_tokens=cap),
                "lang_add": accuracy(model, tokenizer, add_target, ADD_TARGET, max_new_tokens=cap)}

    per_seed: dict[str, list[dict[str, Any]]] = {}
    model, tokenizer = load(base)
    per_seed["pretrained"] = [scores(model, tokenizer)]
    for seed in ctx.seeds:
        language_rows = [to_target(r) for r in tasks.examples(list(LANGUAGE_TASKS), cfg["language_examples"],
                                                              seed=700 + seed)]
        d_lang, t_lang = lt_sft_delta(ctx, language_rows, steps=cfg["language_steps"], cfg=cfg, seed=seed,
                                      l1=cfg["language_l1"], base=base)
        d_task, t_task = lt_sft_delta(ctx, task_train[seed], steps=cfg["task_steps"], cfg=cfg, seed=seed, l1=0.0,
                                      base=base)
        line = f"  seed {seed}"
        # The paper composes a language SFT's body with a task SFT whose head is the task's own (the MLM head is not
        # part of the task model); here both deltas change the shared LM head, densely: "composed-task-head" keeps
        # only the task delta's head change.
        d_lang_body = SparseDelta({n: e for n, e in d_lang.tensors.items() if n != HEAD}, dict(d_lang.metadata))
        for name, deltas in (("task-only", (d_task,)), ("language-only", (d_lang,)), ("composed", (d_lang, d_task)),
                             ("composed-task-head", (d_lang_body, d_task))):
            model, _ = load(base)
            apply_delta(model, *deltas)
            result = {**scores(model, tokenizer), "seed": seed}
            per_seed.setdefault(name, []).append(result)
            line += (f"  {name}: target-lang {result['target_lang']:.3f} source-lang {result['source_lang']:.3f} "
                     f"lang-add {result['lang_add']:.3f}")
        per_seed["task-only"][-1].update(final_loss=final_loss(t_task), train_seconds=t_task.train_seconds)
        per_seed["language-only"][-1].update(final_loss=final_loss(t_lang), train_seconds=t_lang.train_seconds)
        ctx.log(line + f"  ({t_lang.train_seconds + t_task.train_seconds:.0f} s training)")
    theta = base_note.split(":", 1)[0].split(",", 1)[0]  # "θ0", or the base's own symbol
    notes = {"pretrained": base_note,
             "task-only": f"{theta} + Δ_task (LT-SFT on source-script increment)",
             "language-only": f"{theta} + Δ_language (LT-SFT on target-script add / add_steps / count)",
             "composed": f"{theta} + Δ_language + Δ_task (apply_delta of both)",
             "composed-task-head": f"{theta} + Δ_language without its LM-head change + Δ_task"}
    return {
        "rows": summarize_rows(per_seed, ["target_lang", "source_lang", "lang_add"], notes),
        "metrics": [["target_lang", "increment, target script"], ["source_lang", "increment, source script"],
                    ["lang_add", "addition, target script"]],
        "config": {**cfg, "target_digits": TARGET_DIGITS, "language_tasks": list(LANGUAGE_TASKS)},
        "extra": {},
    }
