"""The quick start: a real fine-tuning run with a plugin, offline, in well under a minute on a CPU.

``python -m ftplugins.quickstart [--plugins NAME] [--<plugin>_<option> VALUE]`` fine-tunes a small
Llama-shaped model on chain-of-thought sums of three numbers and reports the answer accuracy (greedy
decoding on held-out prompts) and the held-out loss before and after. The model starts from
:mod:`ftplugins.tiny_base`, a tiny Llama pre-trained once (cached) on sums of two and four numbers: it
knows the format and the additions but gets three-number sums wrong, so every plugin — adapters
included — shows what fine-tuning with it achieves.

Writes ``--output_dir`` afresh on every run (staged, then swapped in): ``model/`` (the fine-tuned model,
or the adapter, with its tokenizer and ``ftplugins_run.json``), ``base/`` (for adapters: the base the
adapter was trained on, named by the adapter's ``base_model_name_or_path``), ``metrics.json`` (plugins,
every option's value, settings, before/after) and ``samples.txt`` (each held-out prompt, the model's
answer, the gold answer, right or wrong).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cli_errors import exit_on_user_error
from .output import ignore_trl_gradient_checkpointing_default

DEFAULT_PLUGINS = ["masked_thought"]
FULL_LR, ADAPTER_LR = 3e-3, 1e-1


@dataclass
class QuickstartArguments:
    """The quick start's own settings (plugin options are ``--<plugin>_<option> VALUE``, as in ``train``)."""

    output_dir: str = field(default="quickstart-output", metadata={"help": "replaced by each run"})
    max_steps: int = field(default=200, metadata={"help": "training steps"})
    learning_rate: float | None = field(default=None, metadata={
        "help": f"peak learning rate (cosine schedule); default {FULL_LR} for full fine-tuning, {ADAPTER_LR} when the "
                "plugins train an adapter (a few parameters need larger steps)"})
    train_examples: int = field(default=1000, metadata={"help": "training examples (sums of three numbers)"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out prompts for loss and answer accuracy"})
    seed: int = field(default=0, metadata={"help": "seed of the data and the training run"})


def parse_args(argv: Sequence[str]):
    """``(settings, plugins, {plugin name: options})``; ``--plugins`` defaults to masked_thought."""
    from . import registry
    from .selection import parse, selected_names

    argv = translate_deprecated_options(list(argv))
    if any(a in ("-h", "--help") for a in argv):
        print_help(argv)
        raise SystemExit(0)
    names = selected_names(argv) if any(a.split("=")[0] == "--plugins" for a in argv) else DEFAULT_PLUGINS
    plugins = registry.select([n for n in names if n != "none"])
    argv = [a for i, a in enumerate(argv) if not _is_plugins_argument(argv, i)]
    (settings,), options = parse([QuickstartArguments], plugins, argv)
    return settings, plugins, options


def _is_plugins_argument(argv: list[str], i: int) -> bool:
    token = argv[i]
    if token == "--plugins" or token.startswith("--plugins="):
        return True
    return i > 0 and argv[i - 1] == "--plugins" and not token.startswith("--")


def translate_deprecated_options(argv: list[str]) -> list[str]:
    """``--option KEY=VALUE`` (before 0.2) becomes ``--KEY VALUE``, with a note on stderr."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--option" and i + 1 < len(argv):
            key, _, value = argv[i + 1].partition("=")
            print(f"note: --option {argv[i + 1]} is deprecated; write --{key} {value} (as python -m ftplugins.train "
                  "takes it)", file=sys.stderr)
            out += [f"--{key}", value]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def print_help(argv: list[str]) -> None:
    from transformers import HfArgumentParser

    from . import registry
    from .selection import selected_names

    names = selected_names(argv) or DEFAULT_PLUGINS
    plugins = registry.select([n for n in names if n != "none"])
    parser = HfArgumentParser([QuickstartArguments, *(p.options for p in plugins if p.options)])
    parser.prog = "python -m ftplugins.quickstart"
    parser.description = __doc__.split("\n\n")[0] + (
        " --plugins a,b selects plugins (default masked_thought; `none` for plain fine-tuning); "
        "`ftplugins info NAME` lists a plugin's options.")
    parser.print_help()


def held_out_rows(n: int, seed: int, exclude: set[str]) -> list[dict[str, str]]:
    """``n`` sums of three numbers whose prompts are not among ``exclude`` (the training prompts)."""
    import random

    from .testing import arithmetic_example

    rng, rows = random.Random(seed), []
    while len(rows) < n:
        row = arithmetic_example(rng, terms=3)
        if row["prompt"] not in exclude:
            rows.append(row)
            exclude = exclude | {row["prompt"]}
    return rows


def answer_accuracy(model, tokenizer, rows, max_new_tokens: int = 40) -> tuple[float, list[str]]:
    """Share of prompts whose greedy completion states the right final answer, and one line per prompt."""
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
            right = f"The answer is {row['answer']}." in text
            correct += right
            samples.append(f"[{'right' if right else 'wrong'}] {row['prompt']} -> {text.strip()}  "
                           f"(gold: {row['answer']})")
    tokenizer.padding_side = "right"
    return correct / max(len(rows), 1), samples


def build_trainer(settings: QuickstartArguments, plugins: list, options: dict, output_dir: str):
    """The composed SFT trainer on the pre-trained tiny base; returns ``(trainer, held-out rows, base folder)``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .composition import compose_run
    from .context import Run
    from .testing import arithmetic_dataset
    from .tiny_base import tiny_base

    base = tiny_base()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    train_set = arithmetic_dataset(settings.train_examples, seed=settings.seed, terms=3)
    rows = held_out_rows(settings.eval_prompts, settings.seed + 1, set(train_set["prompt"]))
    config = SFTConfig(
        output_dir=output_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=32,
        learning_rate=settings.learning_rate or FULL_LR,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, settings.max_steps // 20),
        logging_steps=max(1, settings.max_steps // 5),
        save_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
        max_length=64,
    )
    trainer_cls = compose_run(SFTTrainer, Run(plugins=plugins, options=options))
    eval_set = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = trainer_cls(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                          processing_class=tokenizer)
    if settings.learning_rate is None and is_adapter(trainer.model):
        trainer.args.learning_rate = ADAPTER_LR  # read when training starts
    return trainer, rows, base


def is_adapter(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def quickstart(argv: Sequence[str]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .atomic import replace_dir
    from .threads import one_thread

    settings, plugins, options = parse_args(argv)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # the quick start prints its own summary: per-file and per-map bars are noise
    hf_logging.disable_progress_bar()
    ignore_trl_gradient_checkpointing_default()
    destination = os.path.abspath(settings.output_dir)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=os.path.dirname(destination))
    try:
        with one_thread():
            metrics = run_in(staging, destination, settings, plugins, options)
        replace_dir(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out = settings.output_dir
    print(f"artifacts: {out}/model/" + (f", {out}/base/" if metrics["adapter"] else "")
          + f", {out}/metrics.json, {out}/samples.txt")
    return metrics


def run_in(staging: str, destination: str, settings: QuickstartArguments, plugins: list, options: dict) -> dict:
    """Train, evaluate and write every artifact into ``staging`` (which becomes ``destination``)."""
    names = [p.name for p in plugins]
    trainer, rows, base = build_trainer(settings, plugins, options, os.path.join(staging, "model"))
    tokenizer = trainer.processing_class
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    print(f"ftplugins quick start: plugins={','.join(names) or 'none'}, {trainable:,} of {total:,} parameters "
          f"trained, {settings.train_examples} training examples, {settings.max_steps} steps")
    before = {"eval_loss": trainer.evaluate()["eval_loss"],
              "answer_accuracy": answer_accuracy(trainer.model, tokenizer, rows)[0]}
    print(f"before: held-out loss {before['eval_loss']:.3f}, answer accuracy {before['answer_accuracy']:.1%}")
    started = time.time()
    train_loss = trainer.train().training_loss
    seconds = time.time() - started
    accuracy, samples = answer_accuracy(trainer.model, tokenizer, rows)
    after = {"eval_loss": trainer.evaluate()["eval_loss"], "answer_accuracy": accuracy}
    print(f"after:  held-out loss {after['eval_loss']:.3f}, answer accuracy {after['answer_accuracy']:.1%} "
          f"({seconds:.0f} s of training)")
    adapter = save_model(trainer, staging, destination, base)
    run = trainer.ftplugins_run
    metrics = {
        "plugins": names,
        "options": {name: dataclasses.asdict(o) for name, o in run.options.items() if o is not None},
        "settings": {**dataclasses.asdict(settings), "learning_rate": trainer.args.learning_rate},
        "base": {"cached_at": base, "recipe_key": os.path.basename(base).rsplit("-", 1)[-1]},
        "adapter": adapter,
        "trainable_parameters": trainable,
        "train_seconds": seconds,
        "train_loss": train_loss,
        "before": before,
        "after": after,
    }
    with open(os.path.join(staging, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    with open(os.path.join(staging, "samples.txt"), "w") as handle:
        handle.write("\n".join(samples) + "\n")
    return metrics


def save_model(trainer, staging: str, destination: str, base: str) -> bool:
    """``model/``: the fine-tuned model, or the adapter plus ``base/`` (the base it was trained on, which the
    adapter's ``base_model_name_or_path`` names by its final path). Returns whether it is an adapter."""
    model_dir = os.path.join(staging, "model")
    adapter = is_adapter(trainer.model)
    if adapter:
        shutil.copytree(base, os.path.join(staging, "base"), ignore=shutil.ignore_patterns("tiny-base.json"))
        for config in trainer.model.peft_config.values():
            config.base_model_name_or_path = os.path.join(staging, "base")  # PEFT reads it while saving
    trainer.save_model(model_dir)
    if adapter:  # then name the base by the path it will have once the folder is in place
        config_path = os.path.join(model_dir, "adapter_config.json")
        with open(config_path) as handle:
            config = json.load(handle)
        config["base_model_name_or_path"] = os.path.join(destination, "base")
        with open(config_path, "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
    return adapter


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quickstart(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
