"""The tiny pre-trained decoder: built once from a config, trained on the synthetic task family, cached.

The cache folder's name is a hash of everything that determines the weights (model shape,
pre-training recipe, the source of :mod:`benchmarks.quality.tasks`), so a change to any of them
builds a new model and an unchanged configuration is never trained twice. Building is
deterministic (seeded data, seeded init, one process on CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.common import REPO_ROOT
from benchmarks.quality import tasks
from benchmarks.quality.evaluate import task_accuracies

CACHE_FORMAT = 2  # 2: the record is pretrained.json (ftplugins.cache)


@dataclass(frozen=True)
class PretrainConfig:
    """A Llama shape and its pre-training recipe on :data:`tasks.PRETRAIN_TASKS`."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    examples: int = 40_000
    steps: int = 2_000
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    eval_per_task: int = 100
    max_new_tokens: int | None = None  # cap on generated tokens when scoring (smoke runs)
    tasks: tuple[str, ...] = field(default=tuple(tasks.PRETRAIN_TASKS))

    def recipe(self) -> dict[str, Any]:
        """Only what determines the weights (the scoring settings are not part of it), and the tasks' source."""
        with open(tasks.__file__, "rb") as handle:
            source = hashlib.sha256(handle.read()).hexdigest()
        weights = {k: v for k, v in asdict(self).items() if k not in ("eval_per_task", "max_new_tokens")}
        return {"config": weights, "tasks_source": source, "format": CACHE_FORMAT}

    def key(self) -> str:
        from ftplugins.cache import recipe_key

        return recipe_key(self.recipe())


def cache_root() -> str:
    return os.environ.get("FTPLUGINS_BENCH_CACHE") or os.path.join(REPO_ROOT, "benchmarks", ".cache")


def new_model(config: PretrainConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama)


def pretrained(config: PretrainConfig, log=print) -> tuple[str, dict[str, Any]]:
    """The folder of the pre-trained model (built now if not cached) and its build record
    (:func:`ftplugins.cache.cached_build`: ``<cache_root>/pretrained-<key>``, staged and renamed into place)."""
    from ftplugins.cache import cached_build

    def build_into(staging: str) -> dict[str, Any]:
        log(f"pre-trained model: building ({config.steps} steps) ...")
        record = json.loads(json.dumps(build(config, staging, log), default=_plain))
        log(f"pre-trained model: built in {record['seconds']:.0f} s; accuracy {record['accuracy']}")
        return record

    folder, record = cached_build(cache_root(), "pretrained", config.recipe(), build_into)
    log(f"pre-trained model: {folder}")
    return folder, record


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def build(config: PretrainConfig, folder: str, log=print) -> dict[str, Any]:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = tasks.char_tokenizer()
    model = new_model(config, tokenizer)
    train_rows = tasks.examples(list(config.tasks), config.examples, seed=config.seed)
    train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in train_rows])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftplugins-pretrain-") as output_dir:
        args = SFTConfig(
            output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            max_steps=config.steps, per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, config.steps // 20),
            weight_decay=0.0, logging_steps=max(1, config.steps // 10), disable_tqdm=True, seed=config.seed,
            max_length=64, dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             callbacks=[progress_callback(log)])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train_prompts = {r["prompt"] for r in train_rows}
    accuracy = task_accuracies(model, tokenizer, list(config.tasks), config.eval_per_task, seed=0,
                               exclude=train_prompts, max_new_tokens=config.max_new_tokens)
    params = sum(p.numel() for p in model.parameters())
    return {"config": asdict(config), "key": config.key(), "parameters": params, "seconds": seconds,
            "loss_curve": losses, "accuracy": accuracy}


def progress_callback(log):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step (the trainer's own printer is removed)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log(f"  pre-training step {state.global_step}/{state.max_steps}: loss {logs['loss']:.3f}")

    return Progress()
