"""Few-shot-prompted SFT (fewshot_prefix) vs plain SFT at small label budgets, hidden-rule tasks.

The many-shot scenario's hidden-rule tasks, one rule per fine-tune: every prompt is ``m:<word>=``
(3-5 letters, a tag the pre-trained decoder never saw) and the answer is the word copied, reversed,
its first letter or its last letter (copy and reverse are pre-training skills under other tags,
first / last letter are new). For each rule and seed, a budget of n = 16 or 64 gold labels (the
16 are the first 16 of the 64). ``sft-n*`` fine-tunes on all n; ``fewshot-k4-n*`` runs the same
``compose(SFTTrainer, ["fewshot_prefix"])`` with ``fewshot_prefix_k=4``, ``fewshot_prefix_pool_size=4``
(4 of the n labels, drawn with the run's seed, become the in-context pool and are never targets,
so the pool is counted in the label cost and the row trains on n − 4 targets, as the paper's code
counts its few-shot oracle examples) and ``fewshot_prefix_separator=";"`` (the character
tokenizer has no newline): every prompt is ``shot;shot;shot;shot;m:<word>=``, the 4 pool examples
reshuffled per row. Every row: full fine-tuning of the cached pre-trained decoder, lr 3e-4, 100
steps × 8 whatever n is (cosine, no early stopping; 50 epochs of 16 labels, 12.5 of 64). Scored by
exact match of greedy answers on 100 held-out queries per rule (disjoint from every training label
and pool), each row in its own prompt format: few-shot rows with 4 shots from their own pool
(rendered by the plugin's ``prefix_dataset``), SFT rows bare. ``acc`` is the mean over the four rules (per-rule accuracies
are columns); ``acc_bare`` is a few-shot row scored without the prefix (a diagnostic of how much
of its accuracy comes from the context). The claim compares the two rows at n = 16.

The paper's premise, measured (rows added after the first run, which did not reproduce the claim): few-shot
prompting elicits what the model can already do in context, so ``pretrained`` (no fine-tuning, bare prompts) and
``pretrained-k4`` (no fine-tuning, the 4 shots ``fewshot-k4-n16`` draws for the seed) show whether the pre-trained
decoder does the rules from the shots alone. The claim is judged only where it does (``pretrained-k4`` at least
0.05 above chance, 1/52: a random letter is right 1 time in 26 on the two letter rules, a random word never).
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios._common import Context, encode, final_loss, greedy, load, sft, summarize_rows
from benchmarks.quality.scenarios.many_shot import RULES, rule_rows

NAME = "few-shot-sft"
TITLE = "Few-shot-prompted SFT (fewshot_prefix, k=4) vs plain SFT at 16 and 64 gold labels, hidden-rule tasks"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

K = 4
BUDGETS = (16, 64)
SEPARATOR = ";"
CLAIM_BUDGET = 16

FULL = dict(rules=list(RULES), steps=100, batch=8, lr=3e-4, max_length=96, eval_per_rule=100)
SMOKE = dict(rules=["first"], steps=2, batch=4, lr=3e-4, max_length=96, eval_per_rule=2)

PLOT_METRICS = ["acc", *(f"acc_{rule}" for rule in RULES)]


def accuracy(model, tokenizer, queries: list[dict], pool: list[dict] | None, seed: int, k: int = K,
             **layout: str) -> float:
    """Exact match of greedy answers on ``queries``, prefixed with ``k`` shots of ``pool`` (the plugin's rendering;
    ``layout``: its separator, lead and query_separator, default this scenario's separator)."""
    prompts = [q["prompt"] for q in queries]
    if pool is not None:
        from datasets import Dataset

        from ftplugins.methods.fewshot_prefix.prefixing import prefix_dataset

        rows = Dataset.from_list([{"prompt": q["prompt"], "completion": q["completion"]} for q in queries])
        prompts = prefix_dataset(rows, pool, k=k, seed=seed, split="test",
                                 **{"separator": SEPARATOR, **layout})["prompt"]
    texts = greedy(model, tokenizer, [encode(tokenizer, p) for p in prompts], max_new_tokens=7)
    return sum(t.strip() == q["completion"] for t, q in zip(texts, queries)) / max(1, len(queries))


def run(ctx: Context) -> dict[str, Any]:
    from datasets import Dataset

    from ftplugins.methods.fewshot_prefix.prefixing import split_pool

    cfg = SMOKE if ctx.smoke else FULL
    rules = cfg["rules"]
    # per rule and seed, the largest budget's gold labels; smaller budgets are its first rows (nested)
    gold = {(rule, seed): rule_rows(rule, max(BUDGETS), seed=200 + seed) for rule in rules for seed in ctx.seeds}
    seen = {r["prompt"] for rows in gold.values() for r in rows}
    queries = {rule: rule_rows(rule, cfg["eval_per_rule"], seed=9_100, exclude=seen) for rule in rules}

    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in ctx.seeds:
        results: dict[str, dict[str, Any]] = {}
        # the premise: does the pre-trained decoder do the rules in context, before any fine-tuning? (the pool is
        # the one fewshot_prefix draws from the CLAIM_BUDGET labels with this seed)
        model, tokenizer = load(ctx.folder)
        premise_pools: dict[str, list[dict]] = {}
        for rule in rules:
            rows = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                      for r in gold[(rule, seed)][:CLAIM_BUDGET]])
            _, pool = split_pool(rows, K, seed)
            premise_pools[rule] = pool
            results.setdefault("pretrained", {"seed": seed})[f"acc_{rule}"] = accuracy(
                model, tokenizer, queries[rule], None, seed)
            results.setdefault(f"pretrained-k{K}", {"seed": seed})[f"acc_{rule}"] = accuracy(
                model, tokenizer, queries[rule], pool, seed)
            ctx.log(f"  seed {seed} {rule:<8} pretrained acc {results['pretrained'][f'acc_{rule}']:.3f}, "
                    f"with {K} shots {results[f'pretrained-k{K}'][f'acc_{rule}']:.3f}")
        del model
        for rule in rules:
            for n in BUDGETS:
                rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in gold[(rule, seed)][:n]]
                for name, plugins, options in (
                    (f"sft-n{n}", (), {}),
                    (f"fewshot-k{K}-n{n}", ("fewshot_prefix",),
                     {"fewshot_prefix_k": K, "fewshot_prefix_pool_size": K,
                      "fewshot_prefix_separator": SEPARATOR}),
                ):
                    model, tokenizer = load(ctx.folder)
                    trainer = sft(model, tokenizer, rows, steps=cfg["steps"], lr=cfg["lr"], seed=seed,
                                  batch_size=cfg["batch"], max_length=cfg["max_length"], plugins=plugins,
                                  options=options)
                    res = results.setdefault(name, {"seed": seed, "labels": n, "train_seconds": 0.0})
                    if plugins:
                        state = trainer.ftplugins_run.state["fewshot_prefix"]
                        pool, targets = state["pool"], state["report"]["train_rows"]
                        assert len(pool) == K and targets == n - K, (len(pool), targets)
                        assert n != CLAIM_BUDGET or pool == premise_pools[rule], "the premise's pool differs"
                        res[f"acc_{rule}"] = accuracy(trainer.model, tokenizer, queries[rule], pool, seed)
                        res[f"acc_bare_{rule}"] = accuracy(trainer.model, tokenizer, queries[rule], None, seed)
                    else:
                        targets = len(rows)
                        res[f"acc_{rule}"] = accuracy(trainer.model, tokenizer, queries[rule], None, seed)
                    res["targets"] = targets
                    res[f"final_loss_{rule}"] = final_loss(trainer)
                    res["train_seconds"] += trainer.train_seconds
                    ctx.log(f"  seed {seed} {rule:<8} {name:<15} acc {res[f'acc_{rule}']:.3f}"
                            + (f" (bare {res[f'acc_bare_{rule}']:.3f})" if plugins else "")
                            + f"  {targets} targets, loss {res[f'final_loss_{rule}']:.3f}, "
                            f"{trainer.train_seconds:.0f} s")
        for name, res in results.items():
            res["acc"] = sum(res[f"acc_{rule}"] for rule in rules) / len(rules)
            if f"acc_bare_{rules[0]}" in res:
                res["acc_bare"] = sum(res[f"acc_bare_{rule}"] for rule in rules) / len(rules)
            per_seed.setdefault(name, []).append(res)

    notes = {"pretrained": "the pre-trained decoder, no fine-tuning, bare prompts",
             f"pretrained-k{K}": f"the pre-trained decoder, no fine-tuning, prompts prefixed with {K} shots (the "
                                 f"pool fewshot-k{K}-n{CLAIM_BUDGET} draws): few-shot prompting alone"}
    for n in BUDGETS:
        notes[f"sft-n{n}"] = f"plain SFT on {n} gold labels ({n} targets), bare prompts"
        notes[f"fewshot-k{K}-n{n}"] = (f"fewshot_prefix k={K}: {n} gold labels = a pool of {K} + {n - K} targets; "
                                      f"train and test prompts prefixed with the {K} pool examples")
    order = ["pretrained", f"pretrained-k{K}",
             *(name for n in BUDGETS for name in (f"sft-n{n}", f"fewshot-k{K}-n{n}"))]
    metric_keys = ["acc", *(f"acc_{rule}" for rule in rules), "acc_bare"]
    labels = {"acc": "acc. (mean over rules)", "acc_bare": "acc. without prefix",
              **{f"acc_{rule}": f"acc. {rule}" for rule in rules}}
    return {
        "rows": summarize_rows({name: per_seed[name] for name in order}, metric_keys, notes),
        "metrics": [[key, labels[key]] for key in metric_keys],
        "config": {**cfg, "k": K, "budgets": list(BUDGETS), "pool_size": K, "separator": SEPARATOR,
                   "claim_budget": CLAIM_BUDGET,
                   "label_cost": "n gold labels per row; few-shot rows spend K of them on the pool"},
        "extra": {},
    }
