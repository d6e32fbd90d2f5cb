"""Data selection at equal budget: kMQ, iterative kMQ, OT toward a target (GOT-D), influence + coverage (DEALRec)
against random selection and the simpler baselines each paper argues against, hidden-rule tasks.

A synthetic pool with known structure: four tasks, each under its own tag (``c:<word>=`` copy, ``r:`` reverse,
``f:`` first letter, ``l:`` last letter), of unequal size (copy 96 rows, reverse 64, last 64, first 32) and
quality: 30% of the copy and last rows are noise (a random answer of the same length). Every selector picks
the same budget (48 rows) from the same pool; each selection fine-tunes the cached pre-trained decoder (full
fine-tuning, lr 3e-4, equal steps) and is scored by exact match of greedy answers on held-out queries of every
task. ``acc`` is the mean over the four tasks (kMQ's and DEALRec's claims: a good general subset); ``acc_target``
is the first-letter task (GOT-D's claim: select toward a target, given 16 target-task examples that are not in
the pool). Rows: ``random``; ``kmq`` (select_kmeans, 8 clusters over MiniLM embeddings of prompt + answer,
perplexity-weighted draws under the pre-trained decoder); ``kmq-iter`` (select_iteratively, 3 rounds at the paper's
protocol: each round fine-tunes the pre-trained decoder afresh on every row selected so far with the full recipe, as
the paper's code retrains on the growing selection, so the last round trains on the whole budget exactly as ``kmq``
does; clusters reweighted by the held-out rows' NLL, the plugin's default ``round_score``); ``kmq-iter-reward`` (the
same with the paper's d, RM(gold) - RM(generated answer), the task's rule standing in for a perfect reward model: a
noisy gold answer lowers its cluster's weight, where its NLL raises it); ``kmq-iter-slices`` (the same selection,
but one fine-tune whose steps are split over the rounds, each round on its newest slice only: the plugin's in-run
rounds with ``select_kmeans_round_rows slice``, and this scenario's ``kmq-iter`` until 2026-12-05); ``kmq-rounds``
(the plugin itself, ``--select_kmeans_rounds 3`` with its default growing rows: one run of 15 epochs, each the
budget's length, the rounds 5 epochs each, so the same 90 steps); ``ot`` (select_ot toward the target examples);
``closest`` (the rows nearest to the target examples' mean embedding); ``influence`` (select_influence at DEALRec's
protocol: LiSSA influence on a surrogate trained on the pool first -- a copy of the decoder fine-tuned on every pool
row with the rows' recipe -- plus the effort, the gradient norm under the pre-trained decoder being fine-tuned,
coverage over 10 strata); ``influence-top`` (the same scores, highest first, no strata); ``influence-pretrained``
(influence on the untrained pre-trained decoder, as this scenario's ``influence`` did until 2026-12-05).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from benchmarks.quality import tasks
from benchmarks.quality.scenarios._common import Context, encode, final_loss, greedy, load, sft, summarize_rows

NAME = "data-selection"
TITLE = "Data selection (kMQ, iterative kMQ, GOT-D, DEALRec) vs random and simple baselines at equal budget"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

TASKS = {"c": lambda w: w, "r": lambda w: w[::-1], "f": lambda w: w[0], "l": lambda w: w[-1]}
TARGET = "f"
FULL = dict(sizes={"c": 96, "r": 64, "l": 64, "f": 32}, noise={"c": 0.3, "l": 0.3}, budget=48, steps=90, batch=8,
            lr=3e-4, max_length=32, eval_per_task=50, target_examples=16, clusters=8, strata=10)
SMOKE = dict(sizes={"c": 6, "r": 4, "l": 4, "f": 4}, noise={"c": 0.3, "l": 0.3}, budget=6, steps=3, batch=2,
             lr=3e-4, max_length=32, eval_per_task=2, target_examples=2, clusters=2, strata=2)
ROWS = ["random", "kmq", "kmq-iter", "kmq-iter-reward", "kmq-iter-slices", "kmq-rounds", "ot", "closest",
        "influence", "influence-top", "influence-pretrained"]
ROUNDS = 3  # the iterative rows' rounds
#: The iterative rows: their selection trains the model as it goes, so their final model is the last round's.
ITERATIVE = ("kmq-iter", "kmq-iter-reward", "kmq-iter-slices")


def task_rows(tag: str, n: int, rng: random.Random, seen: set[str], noise: float = 0.0) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        word = "".join(rng.choice(tasks.LETTERS) for _ in range(rng.randint(3, 5)))
        prompt = f"{tag}:{word}="
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = TASKS[tag](word)
        noisy = rng.random() < noise
        if noisy:
            answer = "".join(rng.choice(tasks.LETTERS) for _ in answer)
        out.append({"prompt": prompt, "completion": answer, "text": prompt + answer, "task": tag, "noisy": noisy})
    return out


def build(cfg: dict[str, Any], seed: int) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """(pool, target examples, held-out queries per task); the pool is fixed per seed."""
    rng, seen = random.Random(f"data-selection:{seed}"), set()
    pool = [row for tag, n in cfg["sizes"].items() for row in task_rows(tag, n, rng, seen, cfg["noise"].get(tag, 0))]
    target = task_rows(TARGET, cfg["target_examples"], rng, seen)
    queries = {tag: task_rows(tag, cfg["eval_per_task"], rng, seen) for tag in TASKS}
    return pool, target, queries


def accuracy(model, tokenizer, queries: list[dict]) -> float:
    texts = greedy(model, tokenizer, [encode(tokenizer, q["prompt"]) for q in queries], max_new_tokens=7)
    return sum(t.strip() == q["completion"] for t, q in zip(texts, queries)) / max(1, len(queries))


def right(prompt: str, answer: str) -> bool:
    """The task's rule: is ``answer`` the answer to ``prompt`` (``tag:word=``)?"""
    tag, word = prompt[:-1].split(":", 1)
    return TASKS[tag](word) == answer


def reward_gap(model, tokenizer, rows: list[dict]) -> list[float]:
    """The paper's d_i = RM(gold) - RM(generated) with the task's rule as a perfect reward model (1 for a right
    answer): a row the model answers wrongly scores 1, a noisy gold answer 0 or -1, so its cluster loses weight
    where the held-out NLL (the default ``round_score``) gives it more."""
    texts = greedy(model, tokenizer, [encode(tokenizer, r["prompt"]) for r in rows], max_new_tokens=7)
    return [float(right(r["prompt"], r["completion"])) - float(right(r["prompt"], t.strip()))
            for r, t in zip(rows, texts)]


def pairs(rows) -> list[dict[str, str]]:
    """The prompt/completion columns a fine-tune reads (the pool's rows carry more)."""
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def recipe(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every fine-tune's settings but its steps: the rows', the iterative rounds' and the surrogate's."""
    return dict(lr=cfg["lr"], seed=seed, batch_size=cfg["batch"], max_length=cfg["max_length"])


def rounds_epochs(cfg: dict[str, Any]) -> int:
    """The plugin row's epochs (each the budget's length): as close to the other rows' steps as a multiple of the
    rounds allows."""
    per_epoch = -(-cfg["budget"] // cfg["batch"])
    return max(ROUNDS, round(cfg["steps"] / per_epoch / ROUNDS) * ROUNDS)


def plugin_rounds(pool: list[dict], cfg: dict[str, Any], ctx: Context, seed: int):
    """``kmq-rounds``: the select_kmeans plugin's in-run iterative kMQ, selecting while it trains; the trainer."""
    from ftplugins.methods.select_kmeans import plugin as select_kmeans

    model, tokenizer = load(ctx.folder)
    options = dict(select_kmeans_budget=cfg["budget"], select_kmeans_rounds=ROUNDS,
                   select_kmeans_clusters=cfg["clusters"], select_kmeans_text_field="row_text",
                   select_kmeans_seed=seed, select_kmeans_cache_dir=ctx.cache_root + "/selection-cache")
    # The rows kmq embeds (prompt + answer) under another name: beside prompt/completion, TRL appends the EOS token
    # to a column named "text" instead of the completion (ftplugins.dataset_columns warns of it).
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "row_text": r["text"]} for r in pool]
    return sft(model, tokenizer, rows, steps=cfg["steps"], epochs=rounds_epochs(cfg), plugins=[select_kmeans],
               options=options, **recipe(cfg, seed))


def choose(name: str, pool: list[dict], target: list[dict], cfg: dict[str, Any], ctx: Context, seed: int,
           train_round, shared: dict[str, Any]) -> list[int]:
    from ftplugins.data import select
    from ftplugins.data.embed import SentenceEncoder, embed
    from ftplugins.data.source import load_pool

    budget = cfg["budget"]
    quiet = {"show_progress": False, "cache_dir": ctx.cache_root + "/selection-cache", "seed": seed}
    if name == "random":
        return sorted(np.random.default_rng(seed).choice(len(pool), budget, replace=False).tolist())
    if name == "kmq":
        model, tokenizer = load(ctx.folder)
        return select("kmeans", pool, budget, clusters=cfg["clusters"], text_field="text", model=model,
                      tokenizer=tokenizer, **quiet).indices
    if name in ITERATIVE:
        from ftplugins.methods.select_kmeans import select_iteratively

        model, tokenizer = load(ctx.folder)
        score = reward_gap if name == "kmq-iter-reward" else None  # None: the held-out NLL
        return select_iteratively(pool, budget, lambda rows, r: train_round(name, model, tokenizer, rows, r),
                                  model=model, tokenizer=tokenizer, rounds=ROUNDS, clusters=cfg["clusters"],
                                  score=score, text_field="text", **quiet).indices
    if name == "ot":
        return select("ot", pool, budget, target=target, text_field="text", **quiet).indices
    if name == "closest":
        encoder = SentenceEncoder("minilm", "text", 64)
        x = embed(load_pool(pool), encoder, quiet["cache_dir"], show_progress=False).vectors
        y = embed(load_pool(target), encoder, quiet["cache_dir"], show_progress=False).vectors
        return sorted(np.argsort(((x - y.mean(0)) ** 2).sum(1), kind="stable")[:budget].tolist())
    model, tokenizer = load(ctx.folder)
    options = dict(strata=cfg["strata"], damping=0.3, depth=50, max_length=cfg["max_length"], model=model,
                   tokenizer=tokenizer, **quiet)
    surrogate = None  # influence-pretrained: the decoder being fine-tuned scores the influence too
    if name != "influence-pretrained":
        if "surrogate" not in shared:  # DEALRec trains its surrogate on the pool first
            untrained, surrogate_tokenizer = load(ctx.folder)
            shared["surrogate"] = sft(untrained, surrogate_tokenizer, pairs(pool), steps=cfg["steps"],
                                      **recipe(cfg, seed)).model.eval()
        surrogate = shared["surrogate"]
    result = select("influence", pool, budget, surrogate=surrogate, **options)
    if name in ("influence", "influence-pretrained"):
        return result.indices
    return sorted(np.argsort(-result.scores, kind="stable")[:budget].tolist())  # influence-top


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in ctx.seeds:
        pool, target, queries = build(cfg, seed)
        trained: dict[str, Any] = {}
        selected_so_far: dict[str, list[dict[str, str]]] = {}  # per iterative row
        shared: dict[str, Any] = {}  # per seed: the influence rows' trained surrogate

        def train_round(name, model, tokenizer, rows, round_index, seed=seed):
            """One round of an iterative row, training ``model`` in place (select_iteratively scores with it)."""
            new = pairs(rows)
            if name == "kmq-iter-slices":
                trained[name] = sft(model, tokenizer, new, steps=cfg["steps"] // ROUNDS, **recipe(cfg, seed))
                return
            union = selected_so_far.setdefault(name, [])
            union.extend(new)
            if round_index:  # back to the pre-trained weights: each round is a fresh fine-tune on the union
                model.load_state_dict(load(ctx.folder)[0].state_dict())
            trained[name] = sft(model, tokenizer, list(union), steps=cfg["steps"], **recipe(cfg, seed))

        for name in ROWS:
            if name == "kmq-rounds":  # the plugin selects inside its own run
                trainer = plugin_rounds(pool, cfg, ctx, seed)
                chosen = trainer.ftplugins_run.state["select_kmeans_rounds"]["indices"]
            else:
                chosen = choose(name, pool, target, cfg, ctx, seed, train_round, shared)
                if name in ITERATIVE:
                    trainer = trained.pop(name)
                else:
                    model, tokenizer = load(ctx.folder)
                    trainer = sft(model, tokenizer, pairs(pool[i] for i in chosen), steps=cfg["steps"],
                                  **recipe(cfg, seed))
            tokenizer = trainer.processing_class
            res = {"seed": seed, "selected": len(chosen), "final_loss": final_loss(trainer),
                   "noisy_share": sum(pool[i]["noisy"] for i in chosen) / len(chosen),
                   "target_share": sum(pool[i]["task"] == TARGET for i in chosen) / len(chosen)}
            for tag in TASKS:
                res[f"acc_{tag}"] = accuracy(trainer.model, tokenizer, queries[tag])
            res["acc"] = sum(res[f"acc_{tag}"] for tag in TASKS) / len(TASKS)
            res["acc_target"] = res[f"acc_{TARGET}"]
            ctx.log(f"  seed {seed} {name:<14} acc {res['acc']:.3f} target {res['acc_target']:.3f} "
                    f"(noisy {res['noisy_share']:.2f}, target rows {res['target_share']:.2f})")
            per_seed.setdefault(name, []).append(res)

    notes = {
        "random": "uniform draw of the budget",
        "kmq": f"select_kmeans: {cfg['clusters']} clusters, perplexity-weighted draws",
        "kmq-iter": "select_iteratively: 3 rounds, each a fresh fine-tune on all rows selected so far (the paper's)",
        "kmq-iter-reward": "kmq-iter with the paper's d (reward gap; the task's rule as a perfect reward model)",
        "kmq-iter-slices": "the same, one fine-tune split over the rounds, each on its newest slice",
        "kmq-rounds": f"the select_kmeans plugin, {ROUNDS} rounds in one run of {rounds_epochs(cfg)} epochs, each "
                      "round on every row selected so far (select_kmeans_round_rows growing)",
        "ot": "select_ot toward the target examples (MiniLM, eps 0.1)",
        "closest": "nearest to the target examples' mean MiniLM embedding",
        "influence": f"select_influence: influence + 0.5 effort, coverage over {cfg['strata']} strata",
        "influence-top": "the same scores, highest first (no coverage)",
        "influence-pretrained": "influence on the untrained pre-trained decoder, coverage (the first protocol)",
    }
    metric_keys = ["acc", "acc_target", *(f"acc_{t}" for t in TASKS), "noisy_share", "target_share"]
    labels = {"acc": "acc. (mean over tasks)", "acc_target": "acc. target task (first letter)",
              "noisy_share": "share of noisy rows", "target_share": "share of target-task rows",
              **{f"acc_{t}": f"acc. {t}:" for t in TASKS}}
    return {
        "rows": summarize_rows(per_seed, metric_keys, notes),
        "metrics": [[key, labels[key]] for key in metric_keys],
        "config": {**cfg, "target_task": TARGET},
        "extra": {},
    }
