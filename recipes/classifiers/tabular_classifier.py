"""A plain ``transformers.Trainer`` script: a small MLP classifier on numeric tabular rows (a JSONL file).

It knows no plugin; ``gan_augment`` is switched on from outside (README, "Classifier recipes") and adds marked
synthetic rows to the train split only::

    python -m ftplugins.run --plugins gan_augment -- \
        recipes/classifiers/tabular_classifier.py --data recipes/data/tabular_fewshot.jsonl --output_dir out/gan

Rows: numeric feature columns (``--features``, default every column but the label) and an integer ``label``. A
quarter of the rows is held out for evaluation. Besides the model, the script writes the rows each split used
(``train_rows.jsonl``, ``eval_rows.jsonl``) and the eval metrics (``eval_results.json``), so a run can be audited.
"""

import argparse
import json
import os

import torch
from datasets import load_dataset
from transformers import Trainer, TrainingArguments


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="JSONL file of numeric feature columns and a label column")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--label", default="label", help="integer class column")
    parser.add_argument("--features", default="", help="comma-separated feature columns (default: all but the label)")
    parser.add_argument("--num_labels", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--max_steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_cpu", action="store_true")
    return parser.parse_args()


class TabularMLP(torch.nn.Module):
    def __init__(self, features, hidden, num_labels):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, num_labels))

    def forward(self, features, labels=None):
        logits = self.net(features)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Collator:
    """Stacks the feature columns of each row into one tensor; other columns (a marker, ids) are left out."""

    def __init__(self, features, label):
        self.features, self.label = features, label

    def __call__(self, rows):
        return {"features": torch.tensor([[float(r[c]) for c in self.features] for r in rows]),
                "labels": torch.tensor([int(r[self.label]) for r in rows])}


def main():
    args = parse_args()
    data = load_dataset("json", data_files=args.data, split="train").train_test_split(test_size=0.25, seed=args.seed)
    features = [c for c in args.features.split(",") if c] or [c for c in data["train"].column_names
                                                             if c != args.label]
    torch.manual_seed(args.seed)
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, save_strategy="no", seed=args.seed, use_cpu=args.use_cpu,
        report_to="none", disable_tqdm=True, logging_steps=1, remove_unused_columns=False, label_names=["labels"])
    trainer = Trainer(model=TabularMLP(len(features), args.hidden, args.num_labels), args=training,
                      train_dataset=data["train"], eval_dataset=data["test"],
                      data_collator=Collator(features, args.label))
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    if trainer.is_world_process_zero():
        trainer.train_dataset.to_json(os.path.join(args.output_dir, "train_rows.jsonl"))
        trainer.eval_dataset.to_json(os.path.join(args.output_dir, "eval_rows.jsonl"))
        with open(os.path.join(args.output_dir, "eval_results.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)


if __name__ == "__main__":
    main()
