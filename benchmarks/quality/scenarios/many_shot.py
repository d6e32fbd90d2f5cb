"""Many-shot: ManyICL (loss on every answer of a packed many-shot sequence) vs last-answer-only training.

Hidden-rule tasks, where only the in-context examples say what to do: every prompt is
``m:<word>=`` (3-5 letters) and the answer follows one of four rules, the same within a sequence:
copy the word, reverse it, its first letter, its last letter. Copy and reverse are pre-training
skills (under other tags); first / last letter are new. Without examples the rule is a guess
(zero-shot accuracy ≤ about 1/4 plus luck); with k examples of the rule in the context it is
determined.

Both rows fine-tune the cached pre-trained decoder (full fine-tuning, lr 3e-4, 150 steps × 16,
cosine) on the same 4 × 512 examples per seed through ``compose(SFTTrainer, ["many_icl"])``
with ``many_icl_task_column=rule`` and ``max_length=128`` (about 9 shots of one rule per packed
sequence, the same packing for both rows): ``many_icl`` puts the loss on every answer (the paper's
objective), ``last-answer`` (``many_icl_loss=last``) only on the last answer of each sequence (the
few-shot baseline). Scored by exact match of greedy answers on 4 × 50 held-out queries, each after
k = 0, 1, 4, 8 held-out examples of its rule (concatenated as in training: prompt + answer + EOS);
the claim is checked on k = 4. Per-rule accuracies are in ``quality.json``
(``per_rule_k*``). Unlike the paper, the rules at test time are the training rules
(held-out examples, not held-out tasks).
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.scenarios._common import Context, encode, final_loss, greedy, load, sft, summarize_rows

NAME = "many-shot"
TITLE = "Many-shot in-context fine-tuning (ManyICL) vs last-answer-only training, hidden-rule tasks"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

TAG = "m"
RULES = {
    "copy": lambda w: w,
    "reverse": lambda w: w[::-1],
    "first": lambda w: w[0],
    "last": lambda w: w[-1],
}
SHOTS = (0, 1, 4, 8)
CLAIM_SHOTS = 4

FULL = dict(per_rule=512, steps=150, batch=16, lr=3e-4, max_length=128, eval_per_rule=50)
SMOKE = dict(per_rule=8, steps=2, batch=4, lr=3e-4, max_length=128, eval_per_rule=2)


def rule_rows(rule: str, n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, str]]:
    rng, out, seen = random.Random(f"{rule}:{seed}"), [], set(exclude or ())
    for _ in range(100 * n):
        if len(out) == n:
            break
        word = "".join(rng.choice(tasks.LETTERS) for _ in range(rng.randint(3, 5)))
        prompt = f"{TAG}:{word}="
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "completion": RULES[rule](word), "rule": rule})
    return out


def kshot_accuracy(model, tokenizer, queries: dict[str, list[dict]], pool: dict[str, list[dict]], k: int,
                   seed: int = 0) -> tuple[float, dict[str, float]]:
    """Accuracy on every rule's queries (overall, per rule), each after ``k`` examples of its rule from ``pool``."""
    rng = random.Random(f"shots:{k}:{seed}")
    eos = tokenizer.eos_token_id
    ids, refs, rules = [], [], []
    for rule, rows in queries.items():
        for row in rows:
            context: list[int] = []
            for shot in rng.sample(pool[rule], k):
                context += encode(tokenizer, shot["prompt"] + shot["completion"]) + [eos]
            ids.append(context + encode(tokenizer, row["prompt"]))
            refs.append(row["completion"])
            rules.append(rule)
    texts = greedy(model, tokenizer, ids, max_new_tokens=7)
    hits = [t.strip() == r for t, r in zip(texts, refs)]
    per_rule = {rule: sum(h for h, r in zip(hits, rules) if r == rule) / max(1, rules.count(rule)) for rule in queries}
    return sum(hits) / max(1, len(hits)), per_rule


def scores(model, tokenizer, queries, pool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in SHOTS:
        out[f"k{k}"], out[f"per_rule_k{k}"] = kshot_accuracy(model, tokenizer, queries, pool, k)
    out["kshot"], out["zeroshot"] = out[f"k{CLAIM_SHOTS}"], out["k0"]
    return out


def run(ctx: Context) -> dict[str, Any]:
    cfg = SMOKE if ctx.smoke else FULL
    train = {seed: [row for rule in RULES for row in rule_rows(rule, cfg["per_rule"], seed=100 + seed)]
             for seed in ctx.seeds}
    seen = {r["prompt"] for rows in train.values() for r in rows}
    # held-out queries and a held-out pool of in-context examples (disjoint from each other and from training)
    queries = {rule: rule_rows(rule, cfg["eval_per_rule"], seed=9_000, exclude=seen) for rule in RULES}
    seen |= {r["prompt"] for rows in queries.values() for r in rows}
    pool = {rule: rule_rows(rule, max(16, max(SHOTS)), seed=9_001, exclude=seen) for rule in RULES}

    per_seed: dict[str, list[dict[str, Any]]] = {}
    model, tokenizer = load(ctx.folder)
    per_seed["pretrained"] = [scores(model, tokenizer, queries, pool)]
    ctx.log("  pretrained             " + "  ".join(f"k={k} {per_seed['pretrained'][0][f'k{k}']:.3f}" for k in SHOTS))
    for seed in ctx.seeds:
        for name, loss in (("many_icl", "all"), ("last-answer", "last")):
            model, tokenizer = load(ctx.folder)
            trainer = sft(model, tokenizer, train[seed], steps=cfg["steps"], lr=cfg["lr"], seed=seed,
                          batch_size=cfg["batch"], max_length=cfg["max_length"], plugins=("many_icl",),
                          options={"many_icl_loss": loss, "many_icl_task_column": "rule"})
            result = {**scores(trainer.model, tokenizer, queries, pool), "seed": seed,
                      "packed_sequences": len(trainer.train_dataset), "final_loss": final_loss(trainer),
                      "train_seconds": trainer.train_seconds}
            per_seed.setdefault(name, []).append(result)
            ctx.log(f"  seed {seed} {name:<12} " + "  ".join(f"k={k} {result[f'k{k}']:.3f}" for k in SHOTS)
                    + f"  ({result['packed_sequences']} sequences, {result['train_seconds']:.0f} s); per rule, "
                    f"k=0 {result['per_rule_k0']}, k={CLAIM_SHOTS} {result[f'per_rule_k{CLAIM_SHOTS}']}")
    notes = {"pretrained": "the pre-trained decoder (never saw the m: tag)",
             "many_icl": "many_icl, loss on every answer of each packed sequence",
             "last-answer": "many_icl_loss=last: loss on the last answer of each packed sequence only"}
    metrics = [f"k{k}" for k in SHOTS]
    return {
        "rows": summarize_rows(per_seed, [*metrics, "kshot", "zeroshot"], notes),
        "metrics": [[m, f"{m[1:]}-shot acc."] for m in metrics],
        "config": {**cfg, "rules": list(RULES), "shots": list(SHOTS), "claim_shots": CLAIM_SHOTS},
        "extra": {},
    }
