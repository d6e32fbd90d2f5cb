"""Self-generated targets: S3FT (the model's own judge-accepted answers) vs SFT on gold answers.

A fine-tuning task the pre-trained decoder partly solves, with gold answers written in an equivalent
but different style, so that S3FT and SFT train on different targets:

* **Task**: column addition of two numbers below 1000, the pre-training ``s:`` prompts
  (``s:137+582=``; the pre-trained model writes ``7+2=9,3+8=11,1+5+1=7>719`` and gets the final
  sum right on about 0.3 of held-out prompts). **Gold answers** carry the same steps in another
  style: operands of each column swapped, ``;`` between steps, ``;=`` before the sum
  (``2+7=9;8+3=11;5+1+1=7;=719``): the same computation, in the same order, written differently.
* **Judge**: the plugin's ``numeric`` judge (the last number of each text, i.e. the final sum) --
  the paper's final-answer match for maths. Target accuracy is scored by the same criterion on
  200 held-out ``s:`` prompts (disjoint from pre-training and from every seed's training set), in
  whichever style the model writes.
* **Rows**: ``sft`` trains on the gold answers; ``s3ft`` through ``compose(SFTTrainer, ["s3ft"])``:
  the frozen pre-trained model answers every training prompt greedily (40 new tokens), an
  accepted answer becomes the target, else the model's "paraphrase" of the gold answer if accepted,
  else the gold answer. The tiny decoder follows no instructions, so the paraphrase request is
  written in its own language: the copy task, ``c:<gold answer>=`` (write the reference out
  again); the branch runs and its acceptances are counted, but it is not expected to succeed.
  Both rows: the same 256 training prompts per seed, full fine-tuning, lr 3e-4, 150 steps × 16,
  cosine, the seed's data order.
* **Retention**: exact-match accuracy on 60 held-out prompts of each other pre-training task (copy,
  reverse, count, add; the harness's own retention prompts), mean over tasks; forgetting = the
  pre-trained model's retention minus the row's. ``gold_style`` is the share of test answers written
  in the gold style (containing ``;``). The branch counts (self / paraphrase / gold) per seed are in
  ``quality.json`` (``extra.branches``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.evaluate import task_accuracies
from benchmarks.quality.scenarios._common import (Context, choose_rate, encode, final_loss, greedy, load, sft,
                                                  summarize_rows)

NAME = "self-generated"
TITLE = "Self-generated targets (S3FT) vs SFT on gold answers written in another style: accuracy and forgetting"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ["target", "retention", "forgetting", "gold_style"]

TASK = "add_steps"
PARAPHRASE_TEMPLATE = "c:{completion}="

FULL = {"train_examples": 256, "steps": 150, "batch": 16, "lr": 3e-4, "eval_target": 200, "eval_retention": 60,
        "eval_val": 100, "gen_tokens": 40, "max_new_tokens": None}
SMOKE = {"train_examples": 16, "steps": 2, "batch": 8, "lr": 3e-4, "eval_target": 4, "eval_retention": 4,
         "eval_val": 4, "gen_tokens": 6, "max_new_tokens": 4}


def gold_style(completion: str) -> str:
    """``7+2=9,3+8=11,1+5+1=7>719`` -> ``2+7=9;8+3=11;5+1+1=7;=719`` (same steps, another written style)."""
    steps, total = completion.split(">")
    out = []
    for step in steps.split(","):
        lhs, rhs = step.split("=")
        terms = lhs.split("+")
        terms[0], terms[1] = terms[1], terms[0]
        out.append("+".join(terms) + "=" + rhs)
    return ";".join(out) + ";=" + total


def judge(prediction: str, gold: str) -> bool:
    from ftplugins.methods.s3ft.judges import numeric_match

    return numeric_match(prediction, gold)


def target_scores(model, tokenizer, test: list[dict[str, str]], cfg: dict[str, Any]) -> dict[str, Any]:
    budget = min(cfg["gen_tokens"], cfg["max_new_tokens"] or cfg["gen_tokens"])
    texts = greedy(model, tokenizer, [encode(tokenizer, r["prompt"]) for r in test], budget)
    n = max(1, len(test))
    return {"target": sum(judge(t, r["completion"]) for t, r in zip(texts, test)) / n,
            "gold_style": sum(";" in t for t in texts) / n,
            "samples": [f"{r['prompt']}{t}" for r, t in zip(test[:3], texts[:3])]}


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE if ctx.smoke else FULL, task=TASK, style=gold_style, start=ctx.folder,
                    start_note="the pre-trained decoder (writes the pre-training style)")


def run_with(ctx: Context, cfg: dict[str, Any], *, task: str, style: Callable[[str], str], start: str,
             start_note: str, start_prompts: frozenset[str] = frozenset(),
             lrs: tuple[float, ...] | None = None) -> dict[str, Any]:
    """The scenario on ``task`` with gold answers ``style(completion)``, fine-tuning the model in folder ``start``
    (its row is ``pretrained``: the model before this fine-tuning; ``start_prompts``: prompts it was trained on,
    kept out of the test set). ``lrs``: each row at each rate, its rate chosen on ``cfg["eval_val"]`` validation
    prompts, and its per-rate means kept as the row's lr path (a forgetting claim then compares the rows at matched
    target accuracy); else every row at ``cfg["lr"]``."""
    from benchmarks.quality import lr_sweep
    from benchmarks.quality.claims import LR_PATH
    pre_tasks = list(ctx.pretrain.tasks)
    retention_tasks = [t for t in pre_tasks if t != task]
    pretrain_prompts = {r["prompt"] for r in tasks.examples(pre_tasks, ctx.pretrain.examples, ctx.pretrain.seed)}
    train = {seed: [{"prompt": r["prompt"], "completion": style(r["completion"])}
                    for r in tasks.examples([task], cfg["train_examples"], seed=1_000 + seed)]
             for seed in ctx.seeds}
    seen = pretrain_prompts | set(start_prompts) | {r["prompt"] for rows in train.values() for r in rows}
    test = tasks.held_out(task, cfg["eval_target"], seed=0, exclude=seen)
    val = tasks.held_out(task, cfg["eval_val"], seed=1, exclude=seen | {r["prompt"] for r in test}) if lrs else []

    def scores(model, tokenizer) -> dict[str, Any]:
        per_task = task_accuracies(model, tokenizer, retention_tasks, cfg["eval_retention"], seed=0,
                                   exclude=pretrain_prompts, max_new_tokens=cfg["max_new_tokens"])
        values = list(per_task.values())
        return {**target_scores(model, tokenizer, test, cfg), "retention_per_task": per_task,
                "retention": sum(values) / len(values) if values else math.nan}

    per_seed: dict[str, list[dict[str, Any]]] = {}
    model, tokenizer = load(start)
    before = scores(model, tokenizer)
    per_seed["pretrained"] = [{**before, "forgetting": 0.0}]
    ctx.log(f"  pretrained   target {before['target']:.3f}  retention {before['retention']:.3f}  "
            f"gold_style {before['gold_style']:.3f}  {before['retention_per_task']}")
    branches: dict[str, list[dict[str, Any]]] = {}
    s3ft_options = {"s3ft_judge": "numeric", "s3ft_paraphrase": True,
                    "s3ft_paraphrase_template": PARAPHRASE_TEMPLATE, "s3ft_max_new_tokens": cfg["gen_tokens"],
                    "s3ft_batch_size": 64, "s3ft_cache": False}
    by_lr: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for lr in lrs or (cfg["lr"],):
        for seed in ctx.seeds:
            for name, plugins, options in (("sft", (), {}), ("s3ft", ("s3ft",), s3ft_options)):
                model, tokenizer = load(start)
                trainer = sft(model, tokenizer, train[seed], steps=cfg["steps"], lr=lr, seed=seed,
                              batch_size=cfg["batch"], plugins=plugins, options=options)
                result = {**scores(trainer.model, tokenizer), "seed": seed, "final_loss": final_loss(trainer),
                          "train_seconds": trainer.train_seconds, "learning_rate": lr}
                result["forgetting"] = before["retention"] - result["retention"]
                if lrs:
                    result["val_target"] = target_scores(trainer.model, tokenizer, val, cfg)["target"]
                line = ""
                if name == "s3ft":
                    report = trainer.ftplugins_run.state["s3ft"]["report"]
                    counts = {k: report[k] for k in ("self", "paraphrase", "gold", "rows")}
                    result.update({f"from_{k}": v for k, v in counts.items() if k != "rows"})
                    branches.setdefault(name, []).append({"seed": seed, "learning_rate": lr, **counts})
                    line = (f"  targets: {counts['self']} self, {counts['paraphrase']} paraphrase, "
                            f"{counts['gold']} gold")
                by_lr.setdefault(name, {}).setdefault(lr_sweep.lr_key(lr), []).append(result)
                ctx.log(f"  seed {seed} {name:<5} lr {lr_sweep.lr_key(lr)} target {result['target']:.3f}  "
                        f"retention {result['retention']:.3f}  gold_style {result['gold_style']:.3f}  "
                        f"({result['train_seconds']:.0f} s){line}  {result['retention_per_task']}")
    swept: dict[str, Any] = {}
    for name, results in by_lr.items():
        if lrs:
            per_seed[name], swept[name] = choose_rate(results, val="val_target", test="target", log=ctx.log,
                                                      name=name)
        else:
            per_seed[name] = next(iter(results.values()))
    chosen = {name: f" (lr {record['chosen']}, chosen on validation)" for name, record in swept.items()}
    notes = {"pretrained": start_note,
             "sft": "SFT on the gold answers (the other written style)" + chosen.get("sft", ""),
             "s3ft": "s3ft: the starting model's own answer where the final sum is right, else paraphrase, "
                     "else gold; then the same SFT" + chosen.get("s3ft", "")}
    rows = summarize_rows(per_seed, ["target", "retention", "forgetting", "gold_style", "from_self",
                                     "from_paraphrase", "from_gold"], notes)
    for name, results in by_lr.items():
        if lrs:
            path = sorted(summarize_rows(results, ["target", "retention"]).values(),
                          key=lambda entry: entry["per_seed"][0]["learning_rate"])
            rows[name][LR_PATH] = [[e["per_seed"][0]["learning_rate"], e["target_mean"], e["retention_mean"],
                                    e["retention_std"]] for e in path]
    sweep_config = {"lr_sweep": {name: list(lrs) for name in swept},
                    "lr_rule": "best mean validation target accuracy over the seeds (tie: the lower lr)",
                    "lr_test_label": "target acc. (final sum)"} if lrs else {}
    return {
        "rows": rows,
        "metrics": [["target", "target acc. (final sum)"], ["retention", "retention"], ["forgetting", "forgetting"],
                    ["gold_style", "answers in gold style"], ["from_self", "targets: own answer"],
                    ["from_paraphrase", "targets: paraphrase"], ["from_gold", "targets: gold"]],
        "config": {**cfg, "task": task, "judge": "numeric (last number)", "paraphrase_template": PARAPHRASE_TEMPLATE,
                   "retention_tasks": retention_tasks, **sweep_config},
        "extra": {"branches": branches, "test_prompts": len(test), **({"lr_sweep": swept} if lrs else {})},
    }
