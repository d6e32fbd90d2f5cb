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
from benchmarks.quality import bpe, corpus, packing, tasks
from benchmarks.quality.evaluate import task_accuracies
from ftplugins.errors import FtpluginsError

CACHE_FORMAT = 2  # 2: the record is pretrained.json (ftplugins.cache)
SCORING = ("eval_per_task", "max_new_tokens", "log_every", "eval_every", "curve_per_task")


def _source(module) -> str:
    with open(module.__file__, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


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
    # Added for `mid`; they enter the recipe only when set, so older recipes (`small`) keep their keys.
    tokenizer: str = "char"  # "char": tasks.char_tokenizer; "bpe": bpe.train_bpe on the training texts
    vocab_size: int = 0  # BPE vocabulary size (special tokens included)
    max_length: int = 64  # training sequence length in tokens
    max_position_embeddings: int = 128
    pack: bool = False  # several examples per row, each attending only to itself (:mod:`.packing`)
    # Examples of each task per cycle, in `tasks` order (empty: one each). TRL averages the loss over completion
    # tokens, so a task with 3-character answers gets a tenth of the gradient of one with 30: weights rebalance it.
    task_weights: tuple[int, ...] = ()
    # Progress only (not in the recipe): a log line every `log_every` steps (0: a tenth of the run), and every
    # `eval_every` steps (0: never) the held-out loss and accuracy (`curve_per_task` prompts a task) for the curve.
    log_every: int = 0
    eval_every: int = 0
    curve_per_task: int = 16

    def recipe(self) -> dict[str, Any]:
        """Only what determines the weights (the scoring settings are not part of it), and the sources of the
        tasks (and, for a recipe that uses them, of the corpus tasks and the BPE trainer)."""
        weights = {k: v for k, v in asdict(self).items() if k not in SCORING
                   and (k not in LATER or v != LATER[k])}
        recipe = {"config": weights, "tasks_source": _source(tasks), "format": CACHE_FORMAT}
        if self.tokenizer != "char" or any(t in corpus.CORPUS_TASKS for t in self.tasks):
            recipe.update(corpus_source=_source(corpus), bpe_source=_source(bpe))
        if self.pack:
            recipe.update(packing_source=_source(packing))
        return recipe

    def key(self) -> str:
        from ftplugins.cache import recipe_key

        return recipe_key(self.recipe())


#: Fields added after CACHE_FORMAT 2 and their defaults (left out of a recipe that keeps them).
LATER = {"tokenizer": "char", "vocab_size": 0, "max_length": 64, "max_position_embeddings": 128, "pack": False,
         "task_weights": ()}


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
        max_position_embeddings=config.max_position_embeddings,
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
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    wall_started = time.perf_counter()
    train_rows = tasks.examples(task_cycle(config), config.examples, seed=config.seed)
    tokenizer = make_tokenizer(config, train_rows, log)
    model = new_model(config, tokenizer)
    if config.pack:
        train = Dataset.from_list(packing.pack(train_rows, tokenizer, config.max_length))
        log(f"  packed {len(train_rows):,} examples into {len(train):,} rows of <= {config.max_length} tokens")
    else:
        train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in train_rows])
    train_prompts = {r["prompt"] for r in train_rows}
    curve: list[dict[str, Any]] = []
    callbacks = [progress_callback(log)]
    eval_kwargs: dict[str, Any] = {}
    if config.eval_every:
        curve_rows = {name: tasks.held_out(name, config.curve_per_task, seed=1, exclude=train_prompts)
                      for name in config.tasks}
        eval_rows = [r for rows in curve_rows.values() for r in rows]
        eval_kwargs = dict(eval_strategy="steps", eval_steps=config.eval_every, per_device_eval_batch_size=64)
        callbacks.append(curve_callback(config, tokenizer, curve_rows, curve, log))
    on_cpu = not torch.cuda.is_available()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftplugins-pretrain-") as output_dir:
        args = SFTConfig(
            output_dir=output_dir, use_cpu=on_cpu, bf16=False, report_to="none", save_strategy="no",
            max_steps=config.steps, per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, config.steps // 20),
            weight_decay=0.0, logging_steps=config.log_every or max(1, config.steps // 10), disable_tqdm=True,
            seed=config.seed, max_length=config.max_length, dataloader_num_workers=0, **eval_kwargs,
            # TRL infers completion-only loss from the training rows' columns; packed rows carry their own labels,
            # and the held-out rows (prompt/completion) must still be scored on the completion only.
            completion_only_loss=True,
        )
        eval_set = (Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in eval_rows])
                    if config.eval_every else None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_set,
                             processing_class=tokenizer, callbacks=callbacks,
                             data_collator=packing.PackedCollator(tokenizer.pad_token_id) if config.pack else None)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    model = trainer.model.to("cpu")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    accuracy = task_accuracies(model, tokenizer, list(config.tasks), config.eval_per_task, seed=0,
                               exclude=train_prompts, max_new_tokens=config.max_new_tokens)
    params = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n)
    return {"config": asdict(config), "key": config.key(), "parameters": params,
            "non_embedding_parameters": params - embeddings, "vocab_size": len(tokenizer), "seconds": seconds,
            "build_wall_seconds": time.perf_counter() - wall_started,
            "device": "cpu" if on_cpu else torch.cuda.get_device_name(), "torch_threads": torch.get_num_threads(),
            "loss_curve": losses, "heldout_curve": curve, "accuracy": accuracy}


def task_cycle(config: PretrainConfig) -> list[str]:
    """The task of each example in one cycle of the training mix: every task once, or ``task_weights[i]`` times."""
    if not config.task_weights:
        return list(config.tasks)
    weights = config.task_weights
    if len(weights) != len(config.tasks) or not all(isinstance(w, int) and w > 0 for w in weights):
        raise FtpluginsError(f"PretrainConfig.task_weights={weights!r}: give one positive integer per task "
                             f"({len(config.tasks)}: {', '.join(config.tasks)})")
    return [name for name, weight in zip(config.tasks, weights) for _ in range(weight)]


def make_tokenizer(config: PretrainConfig, train_rows: list[dict[str, str]], log=print):
    """The character tokenizer (over the training texts' characters), or a BPE one trained on the training texts
    (deterministic: same rows, same ids)."""
    if config.tokenizer == "char":
        return corpus.char_tokenizer(r["prompt"] + r["completion"] for r in train_rows)
    if config.tokenizer != "bpe":
        raise FtpluginsError(f"PretrainConfig.tokenizer={config.tokenizer!r}: unknown; use 'char' or 'bpe'")
    started = time.perf_counter()
    tokenizer = bpe.train_bpe((r["prompt"] + r["completion"] for r in train_rows), config.vocab_size)
    log(f"  BPE tokenizer: {len(tokenizer)} tokens in {time.perf_counter() - started:.0f} s")
    return tokenizer


def curve_callback(config: PretrainConfig, tokenizer, rows: dict[str, list[dict[str, str]]], curve: list, log):
    """After each evaluation: held-out greedy accuracy per task, appended with the eval loss to ``curve``."""
    from transformers import TrainerCallback

    from benchmarks.quality.evaluate import accuracy

    class HeldOutCurve(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
            side = tokenizer.padding_side
            per_task = {name: accuracy(model, tokenizer, task_rows, tasks.TASKS[name],
                                       max_new_tokens=config.max_new_tokens) for name, task_rows in rows.items()}
            tokenizer.padding_side = side
            model.train()
            mean = sum(per_task.values()) / len(per_task)
            point = {"step": state.global_step, "eval_loss": (metrics or {}).get("eval_loss"),
                     "eval_token_accuracy": (metrics or {}).get("eval_mean_token_accuracy"),
                     "accuracy_mean": mean, "accuracy": per_task}
            curve.append(point)
            log(f"  held-out at step {state.global_step}: loss {point['eval_loss']:.3f}, accuracy {mean:.3f} "
                f"{ {k: round(v, 2) for k, v in per_task.items()} }")

    return HeldOutCurve()


def progress_callback(log):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step (the trainer's own printer is removed)."""

        started = time.perf_counter(), time.process_time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                wall, cpu = time.perf_counter() - self.started[0], time.process_time() - self.started[1]
                log(f"  pre-training step {state.global_step}/{state.max_steps}: loss {logs['loss']:.3f} "
                    f"({wall:.0f} s wall, {cpu:.0f} s CPU since the model was built)")

    return Progress()
