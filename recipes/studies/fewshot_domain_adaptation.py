"""Study: few-shot fine-tuning vs source-only transfer of a classifier to a new domain (MiniLM encoder). Offline.

The lesson of the seed study (few-shot fine-tuning beats source-free domain adaptation): once a model trained on a
source domain meets a target domain, a handful of labelled target examples per class (1 or 3 shots, carefully
tuned) is the baseline to beat. The procedure: train on the source domain; score the target test set as is (the
source-only model); then fine-tune that model on k target examples per class for each k (nested, seeded subsets:
``ftplugins.tools.subsets``) and score again. Writes OUTPUT/sweep.json and sweep.png (target accuracy vs shots; the
0-shot point is the source-only model).

The built-in domains are synthetic sentiment sentences: product reviews (source) and film reviews (target) with
different vocabularies. Point --source/--target at your own .jsonl files (text, label) for a real study.

    python recipes/studies/fewshot_domain_adaptation.py --shots 1,3,8 -o runs/study_fewshot
"""

from __future__ import annotations

import argparse
import os
import random

import torch

from ftplugins.testing import minilm_path
from ftplugins.tools import subsets
from ftplugins.tools.sweep import write_summary

SOURCE = {"things": ["phone", "blender", "laptop", "kettle", "backpack", "charger"],
          1: ["works perfectly", "is excellent value", "is sturdy and reliable", "exceeded my expectations"],
          0: ["broke after a week", "is a waste of money", "stopped charging", "feels cheap and flimsy"]}
TARGET = {"things": ["film", "movie", "sequel", "documentary", "thriller", "comedy"],
          1: ["was a moving masterpiece", "had me laughing throughout", "is beautifully shot", "is a joy to watch"],
          0: ["dragged on forever", "had a pointless plot", "put me to sleep", "was badly acted"]}


def domain(words: dict, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": f"The {rng.choice(words['things'])} {rng.choice(words[label])}.", "label": label})
    return rows


def read_rows(path: str) -> list[dict]:
    import json

    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def train(model, tokenizer, rows: list[dict], steps: int, learning_rate: float, seed: int) -> None:
    """A few AdamW steps of cross-entropy on ``rows`` (cycled in a seeded order)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    model.train()
    for step in range(steps):
        batch = [rows[order[(step * 8 + i) % len(order)]] for i in range(min(8, len(rows)))]
        inputs = tokenizer([r["text"] for r in batch], return_tensors="pt", padding=True)
        loss = model(**inputs, labels=torch.tensor([int(r["label"]) for r in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def accuracy(model, tokenizer, rows: list[dict]) -> float:
    model.eval()
    with torch.no_grad():
        inputs = tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True)
        predicted = model(**inputs).logits.argmax(-1)
    return float((predicted == torch.tensor([int(r["label"]) for r in rows])).float().mean())


def main(argv=None) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="encoder folder (default: the offline MiniLM)")
    parser.add_argument("--source", help="source-domain .jsonl (text, label); default: synthetic product reviews")
    parser.add_argument("--target", help="target-domain .jsonl (text, label); default: synthetic film reviews")
    parser.add_argument("--shots", default="1,3,8", help="target examples per class, e.g. 1,3,8")
    parser.add_argument("--source-steps", type=int, default=30)
    parser.add_argument("--shot-steps", type=int, default=10, help="steps of few-shot fine-tuning per point")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--test-size", type=int, default=40, help="target rows held out for scoring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="runs/study_fewshot")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shots = subsets.parse_shots(args.shots)
    source = read_rows(args.source) if args.source else domain(SOURCE, 64, args.seed)
    target = read_rows(args.target) if args.target else domain(TARGET, 64 + args.test_size, args.seed + 1)
    test, pool = target[:args.test_size], target[args.test_size:]
    path = args.model or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    source_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    train(source_model, tokenizer, source, args.source_steps, args.learning_rate, args.seed)
    state = {k: v.clone() for k, v in source_model.state_dict().items()}
    points = [{"point": "source-only", "kind": "shots", "value": 0, "rows": 0,
               "score": accuracy(source_model, tokenizer, test)}]
    chosen = subsets.kshot_subsets([r["label"] for r in pool], shots, args.seed)
    for k in shots:
        source_model.load_state_dict(state)  # every point starts from the source model
        rows = [pool[i] for i in chosen[k]]
        train(source_model, tokenizer, rows, args.shot_steps, args.learning_rate, args.seed)
        points.append({"point": f"shots-{k}", "kind": "shots", "value": k, "rows": len(rows),
                       "score": accuracy(source_model, tokenizer, test)})
    summary = {"metric": "target-domain accuracy", "kind": "shots", "seed": args.seed, "points": points}
    os.makedirs(args.output, exist_ok=True)
    write_summary(summary, args.output)
    print(", ".join(f"{p['point']}: {p['score']:.3f}" for p in points) + f"; wrote {args.output}/sweep.json")
    return summary


if __name__ == "__main__":
    main()
