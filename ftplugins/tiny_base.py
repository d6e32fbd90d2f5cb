"""A tiny Llama that has learned something: the base of the quick start and the recipes.

An adapter (ssf, bottleneck, block_lora) on a randomly initialised model cannot learn a task, so a
quick start from random weights shows "0% → 0%" for every adapter. This module pre-trains the tiny
Llama of :mod:`ftplugins.testing` on *related* data — chain-of-thought sums of 2 and 4 terms — and the
quick start fine-tunes it on sums of 3 terms, which it does not yet do reliably. The build is
deterministic (seeded data and init, one thread, CPU), takes well under a minute, and is cached by a
hash of its recipe (:mod:`ftplugins.cache`), so it runs once per machine.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

#: Everything that determines the weights (the source of the data and tokenizer code joins the key).
RECIPE: dict[str, Any] = {
    "shape": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
    "terms": [2, 4],
    "max_value": 9,
    "examples": 6000,
    "steps": 400,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "seed": 0,
}


def recipe() -> dict[str, Any]:
    """:data:`RECIPE` plus a hash of the code that makes the data, the tokenizer and the model."""
    import hashlib

    from . import testing

    code = [inspect.getsource(f) for f in (testing.arithmetic_example, testing._corpus, testing._tokenizer_json,
                                          testing.tiny_tokenizer, testing.tiny_llama, pretraining_rows, build)]
    code += [testing.CHAT_TEMPLATE, *testing.SPECIAL_TOKENS]
    return {**RECIPE, "code": hashlib.sha256("\n".join(code).encode()).hexdigest()[:16], "format": 1}


def tiny_base(log=print) -> str:
    """The folder of the pre-trained tiny Llama (model + tokenizer), built now if not cached."""
    from .cache import cache_root, cached_build

    folder, _record = cached_build(cache_root(), "tiny-base", recipe(), lambda staging: build(staging, log))
    return folder


def pretraining_rows(n: int, seed: int, terms: list[int], max_value: int) -> list[dict[str, str]]:
    import random

    from .testing import arithmetic_example

    rng = random.Random(seed)
    return [arithmetic_example(rng, terms[i % len(terms)], max_value) for i in range(n)]


@contextlib.contextmanager
def quiet_build():
    """The build's own two lines are its report: no per-map dataset bars, no warning for TRL's own default."""
    import warnings

    import datasets

    from .output import ignore_trl_gradient_checkpointing_default

    bars = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            ignore_trl_gradient_checkpointing_default()
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def build(folder: str, log=print) -> dict[str, Any]:
    """Pre-train the tiny Llama on :data:`RECIPE` and save it with its tokenizer into ``folder``."""
    import shutil
    import time

    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from .testing import tiny_llama, tiny_tokenizer
    from .threads import one_thread

    r = RECIPE
    log(f"ftplugins: pre-training the tiny base model once ({r['steps']} steps, cached in {os.path.dirname(folder)})")
    tokenizer = tiny_tokenizer()
    rows = pretraining_rows(r["examples"], r["seed"], r["terms"], r["max_value"])
    dataset = Dataset.from_list([{"prompt": x["prompt"], "completion": x["completion"]} for x in rows])
    started = time.perf_counter()
    with one_thread(), torch.random.fork_rng(), quiet_build():
        model = tiny_llama(seed=r["seed"], **r["shape"])
        args = SFTConfig(
            output_dir=os.path.join(folder, ".trainer"), use_cpu=True, bf16=False, report_to="none",
            save_strategy="no", max_steps=r["steps"], per_device_train_batch_size=r["batch_size"],
            learning_rate=r["learning_rate"], lr_scheduler_type="cosine", warmup_steps=max(1, r["steps"] // 20),
            logging_steps=r["steps"], disable_tqdm=True, seed=r["seed"], data_seed=r["seed"], max_length=64,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    loss = next((e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e), None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(os.path.join(folder, ".trainer"), ignore_errors=True)
    seconds = time.perf_counter() - started
    log(f"ftplugins: tiny base model ready in {seconds:.0f} s")
    return {"seconds": seconds, "train_loss": loss, "parameters": sum(p.numel() for p in model.parameters())}
