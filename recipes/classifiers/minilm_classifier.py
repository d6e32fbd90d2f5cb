"""A plain ``transformers.Trainer`` script: the MiniLM encoder on a JSONL text-classification file.

It knows no plugin; a method is switched on from outside by ``ftplugins.run`` (README, "Classifier recipes"):

    python -m ftplugins.run --plugins mean_teacher --mean_teacher_alpha 0.99 -- \
        recipes/classifiers/minilm_classifier.py --data recipes/data/reviews_stream.jsonl --output_dir out/mt

Rows are ``{"text": ..., "label": ...}`` plus any other column (``task`` for ``hyper_adapter``), kept as they are.
``--head sequence`` (default) tokenizes ``text`` for ``AutoModelForSequenceClassification``; ``--head masked_lm``
loads ``AutoModelForMaskedLM`` and leaves the raw text to the cloze methods (``pet``, ``list_selftrain``), which
build their own inputs. The model defaults to the MiniLM checkpoint the tests install (offline).
"""

import argparse

from datasets import load_dataset
from transformers import (AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, Trainer,
                          TrainingArguments)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="JSONL file with a text column and a label column")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the local MiniLM of ftplugins.testing)")
    parser.add_argument("--head", choices=("sequence", "masked_lm"), default="sequence")
    parser.add_argument("--num_labels", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--save_steps", type=int, default=0, help="checkpoint every N steps (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_cpu", action="store_true")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.model is None:
        from ftplugins.testing import minilm_path

        args.model = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_dataset("json", data_files=args.data, split="train")
    if args.head == "sequence":
        model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=args.num_labels)
        data = data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=64), remove_columns=["text"])
    else:
        model = AutoModelForMaskedLM.from_pretrained(args.model)
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, seed=args.seed, use_cpu=args.use_cpu, report_to="none",
        disable_tqdm=True, logging_steps=1)
    trainer = Trainer(model=model, args=training, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
