"""The quick start: a real fine-tuning run with a plugin, offline, in about two minutes on a CPU.

``python -m ftplugins.quickstart`` fine-tunes a small Llama-shaped model (built from a config and
the locally trained tokenizer of :mod:`ftplugins.testing`) on the built-in chain-of-thought
arithmetic task with the ``masked_thought`` plugin, and reports the answer accuracy (greedy
decoding on held-out prompts) and the held-out loss before and after. Artifacts: the trained
model and tokenizer, ``metrics.json`` and ``samples.txt`` in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from .cli_errors import exit_on_user_error


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ftplugins.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="quickstart-output")
    parser.add_argument("--plugins", default="masked_thought", help="comma-separated plugins (default: masked_thought)")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a plugin option, e.g. --option masked_thought_ratio=0.2 (repeatable)")
    return parser.parse_args(list(argv))


def parse_option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def answer_accuracy(model, tokenizer, rows, max_new_tokens: int = 40) -> tuple[float, list[str]]:
    """Share of prompts whose greedy completion states the right final answer."""
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    correct, samples = 0, []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        batch = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for row, text in zip(chunk, texts):
            correct += f"The answer is {row['answer']}." in text
            samples.append(f"{row['prompt']} -> {text.strip()}")
    return correct / max(len(rows), 1), samples


def quickstart(argv: Sequence[str]) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.atomic import staged_dir
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    plugins = [p for p in args.plugins.split(",") if p]
    options = dict(parse_option(o) for o in args.option)
    trainer_cls = ftplugins.compose(SFTTrainer, plugins, **options)

    tokenizer = tiny_tokenizer()
    model = tiny_llama(seed=args.seed, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    train_set = arithmetic_dataset(4000, seed=args.seed, terms=3)
    test_set = arithmetic_dataset(args.eval_prompts, seed=args.seed + 1, terms=3)
    print(f"ftplugins quick start: plugins={plugins or 'none'}, model={sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {len(train_set)} training examples, {args.max_steps} steps")

    config = SFTConfig(
        output_dir=os.path.join(args.output_dir, "checkpoints"),
        max_steps=args.max_steps,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.max_steps // 20),
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=args.seed,
        max_length=64,
    )
    trainer = trainer_cls(model=model, args=config, train_dataset=train_set, eval_dataset=test_set,
                          processing_class=tokenizer)
    rows = list(test_set)
    before = {"eval_loss": trainer.evaluate()["eval_loss"], "answer_accuracy": answer_accuracy(model, tokenizer, rows)[0]}
    print(f"before: held-out loss {before['eval_loss']:.3f}, answer accuracy {before['answer_accuracy']:.1%}")
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    accuracy, samples = answer_accuracy(trainer.model, tokenizer, rows)
    after = {"eval_loss": trainer.evaluate()["eval_loss"], "answer_accuracy": accuracy}
    print(f"after:  held-out loss {after['eval_loss']:.3f}, answer accuracy {after['answer_accuracy']:.1%} "
          f"({seconds:.0f} s of training)")

    model_dir = os.path.join(args.output_dir, "model")
    trainer.save_model(model_dir)
    metrics = {"plugins": plugins, "options": options, "max_steps": args.max_steps, "train_seconds": seconds,
               "before": before, "after": after}
    with staged_dir(args.output_dir) as tmp:
        with open(os.path.join(tmp, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
        with open(os.path.join(tmp, "samples.txt"), "w") as handle:
            handle.write("\n".join(samples) + "\n")
    print(f"artifacts: {model_dir}/, {args.output_dir}/metrics.json, {args.output_dir}/samples.txt")
    return metrics


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quickstart(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
