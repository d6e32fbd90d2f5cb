"""Few-shot-prompted SFT in the decoder's own in-context layout: the diagnosis of ``few-shot-sft``'s premise.

``few-shot-sft`` found the paper's premise missing: with 4 shots joined by ``;`` before ``m:<word>=`` the
pre-trained decoder does none of the rules (``pretrained-k4``: 0.009, chance 1/52). It did learn to read examples
in pre-training, in one layout only (the corpus task ``icl_rule``, 0.33 held out): ``e:abc>cba;dog>god;xyz>zyx|pqr=``
→ ``rqp``, three examples under the tag ``e``, each ``word>answer``, the query after ``|`` (its rules: copy, reverse,
double, sort, rotate; first/last letter are new). Here the few-shot row is prompted in that layout through the
plugin's options: ``fewshot_prefix_lead="e:"``, ``fewshot_prefix_separator=";"``,
``fewshot_prefix_query_separator="|"``, k = 3 (the corpus's count). Of each rule and seed's 16 gold labels
(``few-shot-sft``'s draw) 3 become the pool (the plugin's own seeded split), given to the plugin as a file in the
example layout (``word>`` → answer; ``fewshot_prefix_pool_path``), and the other 13 are targets ``word=`` → answer:
the pool still counts in the 16. ``sft-n16`` is ``few-shot-sft``'s row (all 16 labels, bare ``m:<word>=``).
``pretrained`` (bare) and ``pretrained-k3`` (the 3 shots, this layout, no fine-tuning) measure the premise here.
Steps, learning rate, queries and scoring are ``few-shot-sft``'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from benchmarks.quality.scenarios import few_shot_sft
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows
from benchmarks.quality.scenarios.many_shot import TAG, rule_rows

NAME = "few-shot-sft-icl"
TITLE = "Few-shot-prompted SFT in the decoder's own in-context layout (k=3) vs plain SFT at 16 gold labels"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = few_shot_sft.PLOT_METRICS

K = 3
LAYOUT = {"separator": ";", "lead": "e:", "query_separator": "|"}
BUDGET = few_shot_sft.CLAIM_BUDGET
FULL, SMOKE = few_shot_sft.FULL, few_shot_sft.SMOKE


def _word(row: dict) -> str:
    return row["prompt"][len(TAG) + 1:-1]  # "m:<word>=" -> "<word>"


def as_query(row: dict) -> dict:
    return {"prompt": f"{_word(row)}=", "completion": row["completion"]}


def as_shot(row: dict) -> dict:
    return {"prompt": f"{_word(row)}>", "completion": row["completion"]}


def icl_accuracy(model, tokenizer, queries: list[dict], shots: list[dict], seed: int) -> float:
    return few_shot_sft.accuracy(model, tokenizer, [as_query(q) for q in queries], shots, seed, k=K, **LAYOUT)


def run(ctx: Context) -> dict[str, Any]:
    from datasets import Dataset

    from ftplugins.methods.fewshot_prefix.prefixing import split_pool

    cfg = SMOKE if ctx.smoke else FULL
    rules = cfg["rules"]
    gold = {(rule, seed): rule_rows(rule, max(few_shot_sft.BUDGETS), seed=200 + seed)[:BUDGET]
            for rule in rules for seed in ctx.seeds}
    seen = {r["prompt"] for rule in rules for seed in ctx.seeds
            for r in rule_rows(rule, max(few_shot_sft.BUDGETS), seed=200 + seed)}
    queries = {rule: rule_rows(rule, cfg["eval_per_rule"], seed=9_100, exclude=seen) for rule in rules}
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in ctx.seeds:
        results: dict[str, dict[str, Any]] = {}
        model, tokenizer = load(ctx.folder)
        split: dict[str, tuple[list[dict], list[dict]]] = {}
        for rule in rules:
            labels = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                        for r in gold[(rule, seed)]])
            rest, pool = split_pool(labels, K, seed)
            split[rule] = [as_shot(p) for p in pool], [as_query(r) for r in rest]
            results.setdefault("pretrained", {"seed": seed})[f"acc_{rule}"] = few_shot_sft.accuracy(
                model, tokenizer, queries[rule], None, seed)
            results.setdefault(f"pretrained-k{K}", {"seed": seed})[f"acc_{rule}"] = icl_accuracy(
                model, tokenizer, queries[rule], split[rule][0], seed)
            ctx.log(f"  seed {seed} {rule:<8} pretrained acc {results['pretrained'][f'acc_{rule}']:.3f}, with {K} "
                    f"shots in its layout {results[f'pretrained-k{K}'][f'acc_{rule}']:.3f}")
        del model
        for rule in rules:
            shots, targets = split[rule]
            bare = [{"prompt": r["prompt"], "completion": r["completion"]} for r in gold[(rule, seed)]]
            with tempfile.TemporaryDirectory(prefix="fewshot-pool-") as tmp:
                pool_path = os.path.join(tmp, "pool.jsonl")
                with open(pool_path, "w") as handle:
                    handle.writelines(json.dumps(shot) + "\n" for shot in shots)
                for name, rows, plugins, options in (
                    (f"sft-n{BUDGET}", bare, (), {}),
                    (f"fewshot-k{K}-n{BUDGET}", targets, ("fewshot_prefix",),
                     {"fewshot_prefix_k": K, "fewshot_prefix_pool_path": pool_path,
                      **{f"fewshot_prefix_{key}": value for key, value in LAYOUT.items()}}),
                ):
                    model, tokenizer = load(ctx.folder)
                    trainer = sft(model, tokenizer, rows, steps=cfg["steps"], lr=cfg["lr"], seed=seed,
                                  batch_size=cfg["batch"], max_length=cfg["max_length"], plugins=plugins,
                                  options=options)
                    res = results.setdefault(name, {"seed": seed, "labels": BUDGET, "train_seconds": 0.0})
                    if plugins:
                        report = trainer.ftplugins_run.state["fewshot_prefix"]["report"]
                        assert report["train_rows"] == BUDGET - K and report["pool_size"] == K, report
                        res[f"acc_{rule}"] = icl_accuracy(trainer.model, tokenizer, queries[rule], shots, seed)
                    else:
                        res[f"acc_{rule}"] = few_shot_sft.accuracy(trainer.model, tokenizer, queries[rule], None,
                                                                   seed)
                    res["targets"], res[f"final_loss_{rule}"] = len(rows), final_loss(trainer)
                    res["train_seconds"] += trainer.train_seconds
                    ctx.log(f"  seed {seed} {rule:<8} {name:<15} acc {res[f'acc_{rule}']:.3f}  {len(rows)} targets, "
                            f"loss {res[f'final_loss_{rule}']:.3f}, {trainer.train_seconds:.0f} s")
        for name, res in results.items():
            res["acc"] = sum(res[f"acc_{rule}"] for rule in rules) / len(rules)
            per_seed.setdefault(name, []).append(res)

    notes = {"pretrained": "the pre-trained decoder, no fine-tuning, bare m:<word>= prompts",
             f"pretrained-k{K}": f"the pre-trained decoder, no fine-tuning, the {K} pool examples in its own layout "
                                 "(e:w>a;w>a;w>a|<word>=): few-shot prompting alone",
             f"sft-n{BUDGET}": f"plain SFT on {BUDGET} gold labels, bare prompts (few-shot-sft's row)",
             f"fewshot-k{K}-n{BUDGET}": f"fewshot_prefix k={K} in the decoder's layout: {BUDGET} gold labels = a pool "
                                        f"of {K} + {BUDGET - K} targets"}
    order = ["pretrained", f"pretrained-k{K}", f"sft-n{BUDGET}", f"fewshot-k{K}-n{BUDGET}"]
    metric_keys = ["acc", *(f"acc_{rule}" for rule in rules)]
    labels = {"acc": "acc. (mean over rules)", **{f"acc_{rule}": f"acc. {rule}" for rule in rules}}
    return {
        "rows": summarize_rows({name: per_seed[name] for name in order}, metric_keys, notes),
        "metrics": [[key, labels[key]] for key in metric_keys],
        "config": {**cfg, "k": K, "budget": BUDGET, "layout": LAYOUT, "rules_in_pretraining": ["copy", "reverse"],
                   "label_cost": f"{BUDGET} gold labels per row; the few-shot row spends {K} of them on the pool"},
        "extra": {},
    }
