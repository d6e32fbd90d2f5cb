"""Fine-tune the pre-trained tiny decoder on a held-out target task with one method, and score it.

Every method trains through the path users take, ``ftplugins.compose(SFTTrainer, plugins,
**options)`` (the LoRA baselines through TRL's ``peft_config=``), with the same data, step budget,
batch size, schedule and seed; only the learning rate is the row's own (adapters need larger ones
than full fine-tuning). Scores: exact-match accuracy of greedy answers on held-out prompts of the
target task, and on held-out prompts of every pre-training task (retention; its drop from the
pre-trained model is the forgetting).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.methods import FULL_LR, MethodSpec
from benchmarks.quality import tasks
from benchmarks.quality.evaluate import accuracy, task_accuracies


@dataclass(frozen=True)
class FinetuneConfig:
    target: str = "chain_steps"
    train_examples: int = 256
    steps: int = 150
    batch_size: int = 16
    eval_target: int = 200
    eval_retention: int = 60
    full_lr: float = FULL_LR
    max_new_tokens: int | None = None  # cap on generated tokens when scoring (smoke runs)


def steps_for_epochs(epochs: float, train_examples: int, batch_size: int) -> int:
    """``--epochs``: the fine-tuning steps that pass over ``train_examples`` ``epochs`` times (papers state their
    budgets in epochs; the harness trains in steps). At least one step."""
    if epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {epochs}")
    return max(1, math.ceil(epochs * train_examples / batch_size))


def load_pretrained(folder: str):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def train_rows(config: FinetuneConfig, seed: int) -> list[dict[str, str]]:
    """The target task's training set of one seed (each seed draws its own examples)."""
    return tasks.examples([config.target], config.train_examples, seed=1_000 + seed)


def score(model, tokenizer, config: FinetuneConfig, target_test: list[dict[str, str]], retention_tasks: list[str],
          retention_exclude: set[str]) -> dict[str, Any]:
    target = accuracy(model, tokenizer, target_test, tasks.TASKS[config.target], max_new_tokens=config.max_new_tokens)
    retention = task_accuracies(model, tokenizer, retention_tasks, config.eval_retention, seed=0,
                                exclude=retention_exclude, max_new_tokens=config.max_new_tokens)
    values = list(retention.values())
    return {"target": target, "retention": sum(values) / len(values) if values else math.nan,
            "retention_per_task": retention}


def finetune_once(spec: MethodSpec, folder: str, config: FinetuneConfig, seed: int, target_test: list[dict[str, str]],
                  retention_tasks: list[str], retention_exclude: set[str],
                  target_val: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Fine-tune a fresh copy of the pre-trained model with ``spec``; its scores and training record.

    ``target_val`` (the learning-rate sweep's validation prompts, disjoint from train and test) adds
    ``val_target``, the target accuracy on them, which picks the sweep's learning rate.
    """
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    import ftplugins

    model, tokenizer = load_pretrained(folder)
    rows = train_rows(config, seed)
    train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer_cls = ftplugins.compose(SFTTrainer, list(spec.plugins), **spec.options)
    learning_rate = spec.learning_rate or config.full_lr
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftplugins-quality-") as output_dir:
        args = SFTConfig(
            output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            max_steps=config.steps, per_device_train_batch_size=config.batch_size, learning_rate=learning_rate,
            lr_scheduler_type="cosine", warmup_steps=max(1, config.steps // 10), weight_decay=0.0,
            logging_steps=max(1, config.steps // 5), disable_tqdm=True, seed=seed, data_seed=seed, max_length=64,
            dataloader_num_workers=0,
            **spec.train_args,
        )
        kwargs = {"peft_config": spec.peft()} if spec.peft is not None else {}
        trainer = trainer_cls(model=model, args=args, train_dataset=train, processing_class=tokenizer, **kwargs)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    seconds = time.perf_counter() - started
    trained = trainer.model
    result = score(trained, tokenizer, config, target_test, retention_tasks, retention_exclude)
    if target_val is not None:
        result["val_target"] = accuracy(trained, tokenizer, target_val, tasks.TASKS[config.target],
                                        max_new_tokens=config.max_new_tokens)
    result.update({
        "seed": seed,
        "learning_rate": learning_rate,
        "train_seconds": seconds,
        "trainable_params": sum(p.numel() for p in trained.parameters() if p.requires_grad),
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), math.nan),
    })
    return result
