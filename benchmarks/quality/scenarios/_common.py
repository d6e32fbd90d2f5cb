"""What the scenarios share: one SFT run through ``ftplugins.compose``, greedy decoding, mean ± std rows.

A scenario is a module of this package with ``NAME`` (the claims' ``scenario`` key), ``TITLE``,
``DESIGN`` (one paragraph for the report) and ``run(ctx) -> dict`` returning
``{"rows": {row: {"<metric>_mean", "<metric>_std", "per_seed", "note"}}, "metrics": [[key, label], ...],
"config": {...}, "extra": {...}}``; :mod:`benchmarks.quality.claims` reads the rows.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import common


@dataclass
class Context:
    """What ``__main__`` hands a scenario: the pre-trained decoder and the run's size."""

    folder: str  # the pre-trained decoder (save_pretrained folder, tokenizer included)
    key: str  # its cache key
    pretrain: Any  # the PretrainConfig
    seeds: list[int]
    smoke: bool
    cache_root: str
    log: Any = print
    extra: dict[str, Any] = field(default_factory=dict)


def load(folder: str):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def sft(model, tokenizer, rows: list[dict[str, Any]], *, steps: int, lr: float, seed: int, batch_size: int = 16,
        plugins: Sequence[Any] = (), options: dict[str, Any] | None = None, max_length: int = 64,
        peft_config: Any = None, keep_dir: str | None = None, schedule: str = "cosine", epochs: int | None = None,
        optim: str = "adamw_torch", weight_decay: float = 0.0):
    """Train ``model`` in place on ``rows`` (prompt/completion[/extra columns]) with ``compose(SFTTrainer, plugins)``.

    ``epochs``: train by epochs instead (``max_steps`` -1, for plugins whose rounds are epochs); ``steps`` then only
    sizes the warm-up and the logging interval, so pass the steps the epochs come to. ``optim``: the training
    arguments' optimizer name (``"sgd"``: plain SGD, as a paper's protocol may ask).

    Returns the trainer (``trainer.model`` is the trained model; ``trainer.ftplugins_run`` its plugin run).
    ``keep_dir``: the output folder (the plugins' artifacts stay there); default a temporary one.
    """
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    import ftplugins

    trainer_cls = ftplugins.compose(SFTTrainer, list(plugins), **(options or {}))
    with tempfile.TemporaryDirectory(prefix="ftplugins-scenario-") as tmp:
        output_dir = keep_dir or tmp
        args = SFTConfig(
            output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            max_steps=-1 if epochs else steps, num_train_epochs=epochs or 1, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=64,
            learning_rate=lr, lr_scheduler_type=schedule, warmup_steps=max(1, steps // 10), weight_decay=weight_decay,
            optim=optim,
            logging_steps=max(1, steps // 5), disable_tqdm=True, seed=seed, data_seed=seed, max_length=max_length,
            dataloader_num_workers=0,
        )
        kwargs = {"peft_config": peft_config} if peft_config is not None else {}
        trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, **kwargs)
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        trainer.train_seconds = time.perf_counter() - started
    return trainer


def cached_build(ctx: Context, kind: str, recipe: dict[str, Any], build: Callable[[str], dict[str, Any]]
                 ) -> tuple[str, dict[str, Any]]:
    """A model derived from the pre-trained decoder, built once: ``<cache_root>/<kind>-<hash of recipe>``
    (:func:`ftplugins.cache.cached_build`: staged, renamed into place, ``<kind>.json`` marks it complete).

    The record names the torch thread count of the build: the key does not include it (a cache is shared by runs at
    any count), and a build at another count is not bit-identical (float reductions in another order)."""
    import torch

    from ftplugins.cache import cached_build as build_once

    return build_once(ctx.cache_root, kind, recipe,
                      lambda folder: {**build(folder), "torch_threads": torch.get_num_threads()})


def with_replay(ctx: Context, rows: list[dict[str, Any]], replay: int, seed: int) -> list[dict[str, Any]]:
    """``rows`` mixed with ``replay`` pre-training examples (so a derived model keeps its tasks), shuffled."""
    from benchmarks.quality import tasks

    mixed = rows + [{"prompt": r["prompt"], "completion": r["completion"]}
                    for r in tasks.examples(list(ctx.pretrain.tasks), replay, seed=seed)]
    random.Random(seed + 1).shuffle(mixed)
    return mixed


def final_loss(trainer) -> float:
    return next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), math.nan)


def greedy(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 128) -> list[str]:
    """Greedy completions (special tokens skipped, stopped at EOS) of already tokenized prompts, left-padded."""
    import torch

    model.eval()
    pad = tokenizer.pad_token_id
    out_texts: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out_texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return out_texts


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_full_batch(model, x, y, steps: int, lr: float, weight_decay: float = 0.0):
    """``steps`` full-batch Adam steps of cross-entropy on ``(x, y)`` (small probes and classifiers); returns model."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def choose_rate(by_lr: dict[str, list[dict[str, Any]]], val: str = "val_accuracy", test: str = "accuracy",
                log: Callable[[str], Any] | None = None, name: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A scenario row's learning rate chosen on its validation split, as ``--lr-sweep`` chooses for the decoder's
    rows (:func:`benchmarks.quality.lr_sweep.choose`: the best mean of ``val`` over the seeds, a tie to the lower
    rate). ``by_lr``: lr key -> the per-seed results at that rate (each with ``learning_rate``, ``val`` and ``test``).
    Returns the chosen rate's per-seed results and the sweep's record (candidates, chosen, per lr: the validation
    and test means as ``val_accuracy`` / ``accuracy``, what ``report.scenario_sweep_table`` shows)."""
    from benchmarks.quality import lr_sweep

    per_lr = {}
    for key, results in by_lr.items():
        entry: dict[str, Any] = {"learning_rate": results[0]["learning_rate"]}
        for metric, source in (("val_accuracy", val), ("accuracy", test)):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = common.mean_std([r[source] for r in results])
        per_lr[key] = entry
    chosen = lr_sweep.choose(per_lr, metric="val_accuracy")
    if log is not None:
        log(f"  {name}: chosen lr {chosen} (" + ", ".join(
            f"{k}: val {v['val_accuracy_mean']:.3f} test {v['accuracy_mean']:.3f}" for k, v in per_lr.items()) + ")")
    return by_lr[chosen], {"candidates": list(per_lr), "chosen": chosen, "per_lr": per_lr}


def summarize_rows(per_seed: dict[str, list[dict[str, Any]]], metrics: list[str],
                   notes: dict[str, str] | None = None) -> dict[str, Any]:
    """``{row: {"<metric>_mean", "<metric>_std", "per_seed", "note"}}`` from per-seed results."""
    out: dict[str, Any] = {}
    for name, seeds in per_seed.items():
        entry: dict[str, Any] = {"note": (notes or {}).get(name, ""), "per_seed": seeds}
        for metric in metrics:
            values = [s[metric] for s in seeds if metric in s]
            if values:
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = common.mean_std(values)
        out[name] = entry
    return out
