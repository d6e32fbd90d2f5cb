"""PET, diagnosed: the few-label comparison on a MiniLM that was pre-trained as a masked LM (here, on its own corpus).

In ``few-label`` the PET claims are "not comparable": all-MiniLM-L6-v2 ships no MLM head, so PET's prediction
transform starts from a random initialisation and its zero-shot cloze accuracy is at chance (0.507). PET's premise
is a masked LM that already fills the pattern's mask with the right verbaliser word more often than not, as BERT
does after pre-training on web text, where "it was good" follows praise. This scenario gives MiniLM that the way
BERT got it, masked-language-model training on a small review corpus of its own, in two cached stages: (1) the MLM
head alone (prediction transform and output bias) over MiniLM's frozen encoder and tied word embeddings, 1,000 steps
× 32 at lr 1e-3; (2) from there, every weight, 300 steps × 32 at lr 1e-4 (as BERT's pre-training trains encoder and
head together). Then it repeats ``few-label``'s PET and head rows, both on the stage-2 model: PET on the masked LM,
the classification head on its encoder (with all-MiniLM-L6-v2's pooler), so the two rows share one backbone.

The corpus (4,000 sentences, 400 more held out): a review clause about nouns and with adjectives that no clause of
the task or its shifted set uses (``staff``, ``pizza``; ``cozy``, ``rude``; an optional negation, an optional
intensifier), followed in 70% of the sentences by a summary ``all in all, it was good.`` / ``overall, it was bad.``
/ ``in short, it was good.`` / ``it was bad.`` (its polarity the clause's, negation included), the other 30% a
neutral clause (``the bus was red.``); 15% of tokens masked (the collator's rule). Each stage's record holds its
masked-token accuracy on the held-out sentences and its verbaliser accuracy at their summaries' masked word.

Rows, as in ``few-label`` (its test set, validation set, per-seed label draws and learning-rate rule, all from the
same seeds): ``pet-zero-shot-head-only`` (PET's prediction before training with stage 1's model: context),
``pet-zero-shot`` (the same with stage 2's: the claims' premise), ``head-n16`` / ``head-n64`` (a classification
head + LoRA r=8) and ``pet-n16`` / ``pet-n64`` (``pet`` + LoRA r=8), each rate chosen on validation among 1e-3 /
3e-3 / 1e-2. The claims are ``few-label``'s at 16 and 64 labels, with the same premise (zero-shot at least 0.05
above chance).
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

from benchmarks.quality.scenarios import few_label
from benchmarks.quality.scenarios import minilm_classification as task
from benchmarks.quality.scenarios._common import Context, cached_build, choose_rate, summarize_rows

NAME = "few-label-mlm"
TITLE = "PET, diagnosed: PET vs a head at 16 and 64 labels on MiniLM pre-trained here as a masked LM"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False  # the MiniLM encoder only

# Disjoint from every word list of minilm_classification (the task) and few_label's shifted set.
CORPUS_NOUNS = ["staff", "pizza", "bed", "service", "kitchen", "bus", "park", "shop", "coffee", "apartment", "waiter",
                "pool", "hostel", "train", "market"]
CORPUS_POSITIVE = ["tasty", "fun", "cozy", "cheerful", "gorgeous", "impressive", "elegant", "relaxing", "friendly",
                   "clean"]
CORPUS_NEGATIVE = ["rude", "noisy", "dirty", "cold", "slow", "broken", "messy", "bland", "greasy", "crowded"]
NEUTRAL = ["red", "open", "new", "small", "large", "empty", "full", "old", "round", "closed"]
SUMMARIES = ["all in all, it was {word}.", "overall, it was {word}.", "in short, it was {word}.", "it was {word}."]

FULL = dict(corpus=4_000, heldout=400, mlm_steps=1_000, mlm_batch=32, mlm_lr=1e-3, review_share=0.7, all_steps=300,
            all_lr=1e-4)
SMOKE = dict(corpus=64, heldout=16, mlm_steps=2, mlm_batch=8, mlm_lr=1e-3, review_share=0.7, all_steps=2, all_lr=1e-4)


def corpus_sentence(rng: random.Random, review_share: float) -> dict[str, Any]:
    """One corpus sentence; ``label`` is the summary's polarity (1 positive) or None for a neutral one."""
    noun = rng.choice(CORPUS_NOUNS)
    if rng.random() >= review_share:
        return {"text": f"the {noun} was {rng.choice(NEUTRAL)}.", "label": None}
    positive = rng.random() < 0.5
    negation, intensifier = rng.choice(task.NEGATIONS), rng.choice(task.INTENSIFIERS)
    words = ["the", noun, "was", negation, intensifier, rng.choice(CORPUS_POSITIVE if positive else CORPUS_NEGATIVE)]
    label = int(positive != bool(negation))
    summary = rng.choice(SUMMARIES).format(word="good" if label else "bad")
    return {"text": " ".join(w for w in words if w) + ". " + summary, "label": label}


def _head_checks(model, tokenizer, heldout: list[dict[str, Any]]) -> dict[str, float]:
    """The MLM's own checks on held-out corpus sentences: masked-token accuracy (one seeded token of each masked) and
    the verbaliser's accuracy at the summary's masked word (good vs bad)."""
    import torch

    check = random.Random(1)
    hits = summary_hits = summaries = 0
    good, bad = tokenizer.convert_tokens_to_ids("good"), tokenizer.convert_tokens_to_ids("bad")
    model.eval()
    with torch.no_grad():
        for r in heldout:
            ids = tokenizer(r["text"])["input_ids"]
            position = check.randrange(1, len(ids) - 1)
            if r["label"] is not None:  # the summary word: the last word before the final "."
                word = len(ids) - 3
                masked = list(ids)
                masked[word] = tokenizer.mask_token_id
                logits = model(input_ids=torch.tensor([masked])).logits[0, word]
                summary_hits += int((logits[good] > logits[bad]).item() == bool(r["label"]))
                summaries += 1
            masked = list(ids)
            masked[position] = tokenizer.mask_token_id
            hits += int(model(input_ids=torch.tensor([masked])).logits[0, position].argmax().item() == ids[position])
    return {"mlm_accuracy": hits / max(1, len(heldout)), "summary_accuracy": summary_hits / max(1, summaries)}


def _corpus(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(0)
    rows = [corpus_sentence(rng, cfg["review_share"]) for _ in range(cfg["corpus"] + cfg["heldout"])]
    return rows[: cfg["corpus"]], rows[cfg["corpus"]:]


def _train_mlm(model, tokenizer, rows, steps: int, batch: int, lr: float) -> float:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer

    data = Dataset.from_list([tokenizer(r["text"]) for r in rows])
    with tempfile.TemporaryDirectory(prefix="ftplugins-mlm-head-") as out:
        trainer = Trainer(model=model, args=few_label.training_args(out, steps, batch, lr, 0), train_dataset=data,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
        return few_label.run_trainer(trainer)


def mlm_head(ctx: Context, cfg: dict[str, Any], tokenizer) -> tuple[str, dict[str, Any]]:
    """Stage 1 (cached): the MLM head (prediction transform + output bias) trained on the corpus over MiniLM's frozen
    encoder and tied word embeddings."""
    recipe = {k: cfg[k] for k in ("corpus", "heldout", "mlm_steps", "mlm_batch", "mlm_lr", "review_share")}
    recipe.update(nouns=CORPUS_NOUNS, positive=CORPUS_POSITIVE, negative=CORPUS_NEGATIVE, neutral=NEUTRAL,
                  summaries=SUMMARIES, seed=0, format=1)

    def build(folder: str) -> dict[str, Any]:
        train, heldout = _corpus(cfg)
        model = few_label.masked_lm(0)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("cls.predictions.transform") or name == "cls.predictions.bias"
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ctx.log(f"few-label-mlm: training the MLM head ({trainable:,} parameters, {cfg['mlm_steps']} steps) ...")
        seconds = _train_mlm(model, tokenizer, train, cfg["mlm_steps"], cfg["mlm_batch"], cfg["mlm_lr"])
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        record = {"seconds": seconds, "trainable_parameters": trainable, **_head_checks(model, tokenizer, heldout)}
        ctx.log(f"few-label-mlm: MLM head trained in {seconds:.0f} s; held-out masked-token accuracy "
                f"{record['mlm_accuracy']:.3f}, summary word {record['summary_accuracy']:.3f}")
        return record

    return cached_build(ctx, "minilm-mlm-head", recipe, build)


def mlm_model(ctx: Context, cfg: dict[str, Any], tokenizer) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """Stage 2 (cached): from stage 1, masked-LM training of every weight on the same corpus (as BERT's own
    pre-training trains encoder and head together). Returns the folder (the masked LM; ``encoder/``: the same
    encoder with all-MiniLM-L6-v2's pooler, for the classification-head rows), its record, stage 1's folder and
    record."""
    head_folder, head_record = mlm_head(ctx, cfg, tokenizer)
    recipe = {"head": head_record["key"], "steps": cfg["all_steps"], "batch": cfg["mlm_batch"], "lr": cfg["all_lr"],
              "format": 1}

    def build(folder: str) -> dict[str, Any]:
        from transformers import AutoModel, AutoModelForMaskedLM

        from ftplugins.testing import minilm_path

        train, heldout = _corpus(cfg)
        model = AutoModelForMaskedLM.from_pretrained(head_folder)
        ctx.log(f"few-label-mlm: masked-LM training of every weight ({cfg['all_steps']} steps) ...")
        seconds = _train_mlm(model, tokenizer, train, cfg["all_steps"], cfg["mlm_batch"], cfg["all_lr"])
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        encoder = AutoModel.from_pretrained(str(minilm_path()))  # BertModel with MiniLM's pooler
        missing, _ = encoder.load_state_dict(model.bert.state_dict(), strict=False)
        assert all(name.startswith("pooler.") for name in missing), missing
        encoder.save_pretrained(os.path.join(folder, "encoder"))
        tokenizer.save_pretrained(os.path.join(folder, "encoder"))
        record = {"seconds": seconds, **_head_checks(model, tokenizer, heldout)}
        ctx.log(f"few-label-mlm: every weight trained in {seconds:.0f} s; held-out masked-token accuracy "
                f"{record['mlm_accuracy']:.3f}, summary word {record['summary_accuracy']:.3f}")
        return record

    folder, record = cached_build(ctx, "minilm-mlm", recipe, build)
    return folder, record, head_folder, head_record


def run(ctx: Context) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from benchmarks.quality import lr_sweep
    from ftplugins.testing import minilm_path

    cfg, build_cfg = (few_label.SMOKE, SMOKE) if ctx.smoke else (few_label.FULL, FULL)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    path, record, head_path, head_record = mlm_model(ctx, build_cfg, tokenizer)
    encoder = os.path.join(path, "encoder")
    test, train_id, swept_test = few_label.splits(cfg, ctx.seeds)  # few-label's data, from the same seeds
    per_seed: dict[str, list[dict[str, Any]]] = {}
    per_lr: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for seed in ctx.seeds:
        pool = train_id[seed]
        for name, folder in (("pet-zero-shot-head-only", head_path), ("pet-zero-shot", path)):
            result = {**few_label.pet_zero_shot(tokenizer, seed, test, path=folder), "seed": seed}
            per_seed.setdefault(name, []).append(result)
            ctx.log(f"  seed {seed} {name:<24} accuracy {result['accuracy']:.3f}")
        for n in cfg["labels"]:
            labelled = few_label.draw(lambda rng: rng.choice(pool), n, seed=seed, balanced=True)
            for lr in cfg["few_lrs"]:
                for name, result in ((f"head-n{n}", few_label.train_head(labelled, tokenizer, cfg, seed, swept_test,
                                                                         lr=lr, path=encoder)),
                                     (f"pet-n{n}", few_label.train_pet(labelled, tokenizer, cfg, seed, swept_test,
                                                                       lr=lr, path=path))):
                    result = {**result, "seed": seed, "learning_rate": lr}
                    per_lr.setdefault(name, {}).setdefault(lr_sweep.lr_key(lr), []).append(result)
                    ctx.log(f"  seed {seed} {name:<8} lr {lr_sweep.lr_key(lr)} accuracy {result['accuracy']:.3f} "
                            f"val {result['val_accuracy']:.3f}  ({result['train_seconds']:.0f} s)")
    swept: dict[str, Any] = {}
    for name, by_lr in per_lr.items():
        per_seed[name], swept[name] = choose_rate(by_lr, log=ctx.log, name=name)
    notes = {
        "pet-zero-shot-head-only": "pet's prediction before training with stage 1 only (the MLM head trained on "
                                   "MiniLM's frozen encoder): context",
        "pet-zero-shot": "pet's prediction before any training on the masked LM of stage 2 (the claims' premise)",
        **{f"head-n{n}": f"classification head + LoRA r=8 (q, v) on the stage-2 encoder, {n} labels, lr "
           f"{swept[f'head-n{n}']['chosen']} (chosen on validation)" for n in cfg["labels"]},
        **{f"pet-n{n}": f"pet + LoRA r=8 (q, v) on the stage-2 masked LM, {n} labels, lr "
           f"{swept[f'pet-n{n}']['chosen']} (chosen on validation)" for n in cfg["labels"]},
    }
    order = ["pet-zero-shot-head-only", "pet-zero-shot",
             *(name for n in cfg["labels"] for name in (f"head-n{n}", f"pet-n{n}"))]
    checks = ("key", "seconds", "mlm_accuracy", "summary_accuracy")
    return {
        "rows": summarize_rows({name: per_seed[name] for name in order}, ["accuracy"], notes),
        "metrics": [["accuracy", "test acc. (in distribution)"]],
        "config": {**build_cfg, "labels": list(cfg["labels"]),
                   "lr_sweep": {name: list(cfg["few_lrs"]) for name in swept},
                   "lr_rule": "best mean validation accuracy over the seeds (tie: the lower lr)"},
        "extra": {"lr_sweep": swept,
                  "mlm_stage1_head_only": {"folder": head_path, "trainable_parameters":
                                           head_record["trainable_parameters"],
                                           **{k: head_record[k] for k in checks}},
                  "mlm_stage2_every_weight": {"folder": path, **{k: record[k] for k in checks}}},
    }
