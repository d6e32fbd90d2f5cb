"""CLS-RL: GRPO with the cls_rl rewards improves the pre-trained tiny decoder's classification over its start.

The harness's pre-trained character-level decoder (copy / reverse / count / add skills) learns a task it
never saw: the parity of a number's last digit. Prompt ``p:<2-4 digits>;<class names, shuffled per
example>=`` (``p:4821;odd,even=``; the class list as CLS-RL's prompt lists them, in the alphabet the
character tokenizer has -- ``cls_rl``'s own English prompt would be mostly unknown characters, so the
rows keep their ``prompt`` column, ``cls_rl_text_column=''``), answer ``even`` or ``odd``.

* ``start``: the starting point -- the pre-trained decoder after a short SFT warm-up on 8 labelled
  prompts (20 steps x 8, lr 1e-3, full fine-tuning) that teaches the answer format (a class name then
  EOS), not yet the rule;
* ``cls_rl``: ``start`` trained by TRL's ``GRPOTrainer`` composed with ``cls_rl`` in the No-Thinking mode
  (``cls_rl_mode=no_think``: the only reward is the exact answer; a model this small writes no reasoning), on
  256 training prompts whose labels serve only as the rewards' verifiable answers: 60 steps, 4 prompts
  x 4 generations per step, completions of at most 6 tokens, temperature 1, lr 5e-5, no KL term (beta 0,
  TRL's default);
* ``sft-more``: ``start`` with 60 more SFT steps on its 8 warm-up prompts (the same extra step budget spent
  on the labelled rows instead).

Scored by exact match of the greedy answer on 200 held-out prompts (numbers unseen in training). The
claim compares ``cls_rl`` with ``start``.
"""

from __future__ import annotations

import random
import tempfile
import time
from typing import Any

from benchmarks.quality.scenarios._common import Context, encode, greedy, load, sft, summarize_rows

NAME = "cls-rl"
TITLE = "CLS-RL (GRPO + cls_rl rewards, no-thinking) on the pre-trained tiny decoder: last-digit parity"
DESIGN = __doc__.split("\n\n", 1)[1].strip()

CLASSES = ("even", "odd")
FULL = dict(warmup_rows=8, warmup_steps=20, warmup_lr=1e-3, train=256, test=200, steps=60, prompts_per_step=4,
            generations=4, max_completion=6, lr=5e-5)
SMOKE = dict(warmup_rows=4, warmup_steps=1, warmup_lr=1e-3, train=8, test=8, steps=1, prompts_per_step=2,
             generations=2, max_completion=4, lr=5e-5)


def example(rng: random.Random) -> dict[str, str]:
    number = str(rng.randint(10, 9999))
    names = list(CLASSES)
    rng.shuffle(names)
    label = CLASSES[int(number[-1]) % 2]
    return {"prompt": f"p:{number};{','.join(names)}=", "completion": label, "label": label}


def rows(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    for _ in range(200 * n):
        if len(out) == n:
            break
        row = example(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out


def accuracy(model, tokenizer, test: list[dict[str, str]], max_new_tokens: int) -> float:
    texts = greedy(model, tokenizer, [encode(tokenizer, r["prompt"]) for r in test], max_new_tokens)
    return sum(t.strip() == r["label"] for t, r in zip(texts, test)) / max(1, len(test))


def grpo(model, tokenizer, train: list[dict[str, str]], cfg: dict[str, Any], seed: int):
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    import ftplugins

    trainer_cls = ftplugins.compose(GRPOTrainer, ["cls_rl"], cls_rl_mode="no_think", cls_rl_text_column="",
                                    cls_rl_prompt_format="plain")
    with tempfile.TemporaryDirectory(prefix="ftplugins-cls-rl-") as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_steps=cfg["steps"],
            per_device_train_batch_size=cfg["prompts_per_step"] * cfg["generations"],
            num_generations=cfg["generations"], max_completion_length=cfg["max_completion"], temperature=1.0,
            learning_rate=cfg["lr"], lr_scheduler_type="constant", logging_steps=max(1, cfg["steps"] // 6),
            disable_tqdm=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
        )
        data = Dataset.from_list([{"prompt": r["prompt"], "label": r["label"]} for r in train])
        trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    return trainer.model, seconds, rewards


def run(ctx: Context) -> dict[str, Any]:
    import torch

    cfg = SMOKE if ctx.smoke else FULL
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in ctx.seeds:
        torch.manual_seed(seed)
        warm = rows(cfg["warmup_rows"], seed=500 + seed)
        train = rows(cfg["train"], seed=600 + seed, exclude={r["prompt"] for r in warm})
        used = {r["prompt"][: r["prompt"].index(";")] for r in warm + train}
        test = [r for r in rows(4 * cfg["test"], seed=700) if r["prompt"][: r["prompt"].index(";")] not in used]
        test = test[: cfg["test"]]
        model, tokenizer = load(ctx.folder)
        trainer = sft(model, tokenizer, warm, steps=cfg["warmup_steps"], lr=cfg["warmup_lr"], seed=seed,
                      batch_size=8, schedule="constant")
        start = {n: p.detach().clone() for n, p in trainer.model.state_dict().items()}
        results = {"start": {"accuracy": accuracy(trainer.model, tokenizer, test, cfg["max_completion"])}}
        trained, seconds, rewards = grpo(trainer.model, tokenizer, train, cfg, seed)
        results["cls_rl"] = {"accuracy": accuracy(trained, tokenizer, test, cfg["max_completion"]),
                             "train_seconds": seconds, "reward_first": rewards[0] if rewards else float("nan"),
                             "reward_last": rewards[-1] if rewards else float("nan")}
        more, _ = load(ctx.folder)
        more.load_state_dict(start)
        trainer = sft(more, tokenizer, warm, steps=cfg["steps"], lr=cfg["warmup_lr"], seed=seed, batch_size=8,
                      schedule="constant")
        results["sft-more"] = {"accuracy": accuracy(trainer.model, tokenizer, test, cfg["max_completion"])}
        for name, result in results.items():
            per_seed.setdefault(name, []).append({**result, "seed": seed})
            ctx.log(f"  seed {seed} {name:<9} accuracy {result['accuracy']:.3f}"
                    + (f"  reward {result['reward_first']:.2f} -> {result['reward_last']:.2f} "
                       f"({result['train_seconds']:.0f} s)" if "reward_first" in result else ""))
    notes = {"start": f"pre-trained decoder + SFT warm-up on {cfg['warmup_rows']} labels ({cfg['warmup_steps']} steps)",
             "cls_rl": f"start + GRPO with cls_rl (no_think) rewards, {cfg['steps']} steps x "
                       f"{cfg['prompts_per_step']} prompts x {cfg['generations']} generations",
             "sft-more": f"start + {cfg['steps']} more SFT steps on the {cfg['warmup_rows']} warm-up labels"}
    return {
        "rows": summarize_rows(per_seed, ["accuracy", "reward_first", "reward_last"], notes),
        "metrics": [["accuracy", "test acc. (greedy, exact)"], ["reward_first", "GRPO mean reward, first log"],
                    ["reward_last", "GRPO mean reward, last log"]],
        "config": dict(cfg),
        "extra": {},
    }
