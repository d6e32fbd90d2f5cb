"""``python -m benchmarks.perf.pairs``: classification methods' step time against their plain counterparts.

Each pair is two sides measured in one process, interleaved (side A, side B, A, B, ... for ``--repeats``), so
that machine load hits both; a side's number is the median over its repeats of the median timed step. Pairs:

* ``cls_rl``: a GRPO step (TRL ``GRPOTrainer``, tiny random Llama, 4 prompts x 4 generations, 8 new tokens)
  rewarded by ``cls_rl`` (think mode: the format regex + the answer parse) vs the same step rewarded by a
  trivial reward (a constant): the difference is the rewards' parsing cost, expected to be noise;
* ``list_selftrain``: one LiST student step with meta re-weighting (the ``torch.func`` virtual step and its
  second-order gradient, ``sessions.py``'s loop body) vs the same student step with uniform weights (pet on
  the MiniLM masked LM + LoRA r = 8; 16 unlabelled + 16 labelled rows);
* ``pet``: a ``compose(Trainer, ["pet"])`` step (MiniLM masked LM, LoRA r = 8 on query / value, cloze
  scoring of the verbaliser tokens) vs a plain classification-head step with the same LoRA (batch 16);
* ``mean_teacher``: a ``compose(Trainer, ["mean_teacher"])`` step (teacher forward + EMA update of all 22.7M
  parameters, and by default the prototype soft labels) vs a plain ``Trainer`` step on the same
  full-fine-tuning MiniLM classifier and rows (batch 16,
  half of them unlabelled: label -100, ignored by the plain loss);
* ``hyper_adapter``: a ``compose(Trainer, ["hyper_adapter"])`` step (FM3: the hypernetwork emits both tasks'
  bottleneck adapters, b = 16, after the attention and FFN outputs of every layer; two tasks, 2 and 3 labels,
  mixed in each batch of 16; base frozen) vs the same multitask model with fixed per-task adapters of the same
  shapes (``FixedTaskAdapters``: each task's adapters are its own trainable tensors, started from the
  hypernetwork's output, then the hypernetwork is dropped): the same forward and heads, so the difference is the
  hypernetwork's forward and backward. Both sides' trainable parameter counts are recorded.

Step time: wall time between consecutive optimizer steps (the perf harness's ``StepTimer``) after ``--warmup``
untimed steps; the LiST pair times its student step directly. Peak memory: the training phase's peak above the
resident set at its start (``common.PeakMemory``), the max over repeats. Writes ``pairs.json``, ``pairs.md`` and
``pairs.png``; ``--merge`` keeps the other pairs already in the output folder's ``pairs.json`` (so adding or
re-measuring one pair reruns only that pair) and records which command and commit measured which pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common

TEXTS = ["the movie was not good but the hotel was really awful", "the food was bad but the trip was very nice",
         "the room was never great but the song was quite happy", "the car was awful but the game was not bad"]
VERBALIZER = ["pos:good", "neg:bad"]


def rows(n: int) -> list[dict[str, Any]]:
    return [{"text": f"{TEXTS[i % len(TEXTS)]} {i}", "label": i % 2} for i in range(n)]


def trainer_args(output_dir: str, steps: int, batch: int):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=output_dir, use_cpu=True, report_to="none", save_strategy="no",
                             max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                             lr_scheduler_type="constant", logging_steps=10**6, disable_tqdm=True, seed=0,
                             dataloader_num_workers=0)


def timed_training(build: Callable[[str, Any], Any], warmup: int) -> dict[str, float | None]:
    """Train the trainer ``build(output_dir, timer)`` returns; median timed step and the training peak."""
    from benchmarks.perf.harness import make_step_timer

    timer = make_step_timer("cpu")
    with tempfile.TemporaryDirectory(prefix="ftplugins-pairs-") as out:
        trainer = build(out, timer)
        peak = common.PeakMemory("cpu")
        peak.reset()
        trainer.train()
        bytes_ = peak.peak_above_base()
    steps, _ = timer.timed(warmup)
    return {"step_s": statistics.median(steps), "peak_bytes": bytes_}


# --- the sides ---------------------------------------------------------------------------------


def grpo_side(with_cls_rl: bool, steps: int, warmup: int) -> dict[str, float | None]:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import ftplugins
    from ftplugins.methods.cls_rl.options import ClsRlOptions
    from ftplugins.methods.cls_rl.prompts import build_prompts
    from ftplugins.testing import tiny_llama, tiny_tokenizer

    names = ["cat", "dog", "bird"]
    data = Dataset.from_list([{"text": f"animal number {i}", "label": names[i % 3]} for i in range(64)])
    data = build_prompts(data, ClsRlOptions(cls_rl_labels=names), conversational=False)  # both sides: same prompts

    def constant(completions, **kwargs):
        return [0.0] * len(completions)

    def build(out, timer):
        torch.manual_seed(0)
        args = GRPOConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                          max_steps=warmup + steps, per_device_train_batch_size=16, num_generations=4,
                          max_completion_length=8, logging_steps=10**6, disable_tqdm=True, seed=0)
        if with_cls_rl:
            cls, rewards = ftplugins.compose(GRPOTrainer, ["cls_rl"], cls_rl_text_column="",
                                             cls_rl_labels=names), []
        else:
            cls, rewards = ftplugins.compose(GRPOTrainer, []), [constant]
        return cls(model=tiny_llama(), reward_funcs=rewards, args=args, train_dataset=data,
                   processing_class=tiny_tokenizer(), callbacks=[timer])

    return timed_training(build, warmup)


def classifier_side(plugins: list[str], steps: int, warmup: int, lora: bool, unlabelled_half: bool
                    ) -> dict[str, float | None]:
    """A MiniLM classifier step (LoRA r = 8 + head, or full fine-tuning), plain or with ``plugins``."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    import ftplugins
    from ftplugins.testing import minilm_classifier, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    data = [{**tokenizer(r["text"]), "label": -100 if unlabelled_half and i % 2 else r["label"]}
            for i, r in enumerate(rows(128))]

    def build(out, timer):
        torch.manual_seed(0)
        model = minilm_classifier(num_labels=2)
        if lora:  # the PET pair's plain side: the same LoRA as pet's, a classification head
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["query", "value"], task_type="SEQ_CLS"))
        return ftplugins.compose(Trainer, plugins)(
            model=model, args=trainer_args(out, warmup + steps, 16), train_dataset=Dataset.from_list(data),
            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, callbacks=[timer])

    return timed_training(build, warmup)


def pet_side(steps: int, warmup: int) -> dict[str, float | None]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer, Trainer

    import ftplugins
    from ftplugins.testing import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    data = Dataset.from_list([{"text": r["text"], "label": "pos" if r["label"] else "neg"} for r in rows(128)])

    def build(out, timer):
        torch.manual_seed(0)
        cls = ftplugins.compose(Trainer, ["pet"], pet_verbalizer=VERBALIZER, pet_adapter="lora", pet_lora_r=8)
        return cls(model=AutoModelForMaskedLM.from_pretrained(str(minilm_path())),
                   args=trainer_args(out, warmup + steps, 16), train_dataset=data, processing_class=tokenizer,
                   callbacks=[timer])

    return timed_training(build, warmup)


HYPER_TASKS = ["sentiment:2", "topic:3"]


def fixed_task_adapters_class():
    """The plain side of the ``hyper_adapter`` pair (a benchmark baseline, not a method)."""
    import torch
    from torch import nn

    from ftplugins.methods.hyper_adapter.model import HyperAdapterModel

    class FixedTaskAdapters(HyperAdapterModel):
        """Per-task bottleneck adapters as plain trainable tensors, in the hypernetwork's place."""

        def __init__(self, model, tasks, options):
            super().__init__(model, tasks, options)
            with torch.no_grad():
                self.fixed = nn.ModuleList(
                    nn.ModuleDict({module.replace(".", "/"): nn.ParameterDict(
                        {name: nn.Parameter(value.detach().clone()) for name, value in tensors.items()})
                        for module, tensors in self.hypernetwork(task).items()})
                    for task in range(len(tasks)))
            del self.hypernetwork

        def generated(self, task):
            return {key.replace("/", "."): dict(params.items()) for key, params in self.fixed[task].items()}

    return FixedTaskAdapters


def hyper_side(hyper: bool, steps: int, warmup: int) -> dict[str, float | None]:
    """Two tasks mixed in every batch: the hypernetwork's generated adapters, or fixed per-task ones."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    import ftplugins
    from ftplugins.methods.hyper_adapter.options import HyperAdapterOptions
    from ftplugins.testing import minilm_classifier, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    data = [{**tokenizer(r["text"]), "task": i % 2, "label": i % (2 + i % 2)} for i, r in enumerate(rows(128))]
    trainable: list[int] = []

    def build(out, timer):
        torch.manual_seed(0)
        model = minilm_classifier(num_labels=2)
        if hyper:
            cls = ftplugins.compose(Trainer, ["hyper_adapter"], hyper_adapter_tasks=HYPER_TASKS,
                                    hyper_adapter_export=False)
        else:
            options = HyperAdapterOptions(hyper_adapter_tasks=HYPER_TASKS)
            model = fixed_task_adapters_class()(model, options.task_list(), options)
            cls = ftplugins.compose(Trainer, [])
        trainer = cls(model=model, args=trainer_args(out, warmup + steps, 16), train_dataset=Dataset.from_list(data),
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      callbacks=[timer])
        trainable.append(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))
        return trainer

    result = timed_training(build, warmup)
    return {**result, "trainable_params": trainable[-1]}


class ListStudent:
    """LiST's student step on a trained-shape pet model (``sessions.py``'s loop body, timed directly)."""

    def __init__(self):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorWithPadding

        import peft
        from ftplugins.methods.list_selftrain.sessions import Scorer
        from ftplugins.methods.pet.head import PetHead
        from ftplugins.methods.pet.verbalizer import build_verbalizer
        from ftplugins.testing import minilm_path

        torch.manual_seed(0)
        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        model = peft.get_peft_model(AutoModelForMaskedLM.from_pretrained(str(minilm_path())), peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
        model.add_module("pet_head", PetHead(model.get_base_model(), build_verbalizer(VERBALIZER, self.tokenizer)))
        self.scorer = Scorer(model, self.tokenizer.mask_token_id)
        self.trainable = {n: p for n, p in self.scorer.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=1e-4)
        collate = DataCollatorWithPadding(self.tokenizer)
        filled = [self.tokenizer(f"{r['text']} It was {self.tokenizer.mask_token}.") for r in rows(32)]
        self.batch_u = dict(collate(filled[:16]))
        self.batch_l = dict(collate(filled[16:]))
        self.targets = torch.tensor([r["label"] for r in rows(32)[16:]])
        with torch.no_grad():
            self.teacher = self.scorer(self.batch_u).float()

    def step(self, meta: bool) -> None:
        import torch.nn.functional as F
        from torch.func import functional_call
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from ftplugins.methods.list_selftrain.reweight import (meta_weights, per_example_kl, uniform_weights,
                                                               weighted_distillation)

        if meta:
            self.scorer.eval()
            with sdpa_kernel([SDPBackend.MATH]):
                weights = meta_weights(
                    self.trainable,
                    lambda p: per_example_kl(functional_call(self.scorer, p, (self.batch_u,)), self.teacher),
                    lambda p: F.cross_entropy(functional_call(self.scorer, p, (self.batch_l,)).float(), self.targets),
                    lr=1e-4)
        else:
            weights = uniform_weights(16)
        self.scorer.train()
        loss = weighted_distillation(self.scorer(self.batch_u), self.teacher, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def list_side(student: ListStudent, meta: bool, steps: int, warmup: int) -> dict[str, float | None]:
    for _ in range(warmup):
        student.step(meta)
    peak = common.PeakMemory("cpu")
    peak.reset()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        student.step(meta)
        times.append(time.perf_counter() - started)
    return {"step_s": statistics.median(times), "peak_bytes": peak.peak_above_base()}


# --- the run -----------------------------------------------------------------------------------

PAIRS = {
    # pair: (method side label, plain side label)
    "cls_rl": ("GRPO + cls_rl rewards (think: format + accuracy)", "GRPO + a constant reward"),
    "list_selftrain": ("LiST student step with meta re-weighting", "LiST student step, uniform weights"),
    "pet": ("pet step (cloze + verbaliser head, LoRA r=8)", "classification-head step (LoRA r=8)"),
    "mean_teacher": ("mean_teacher step (teacher forward + EMA)", "plain step (full fine-tuning)"),
    "hyper_adapter": ("hyper_adapter step (hypernetwork-generated adapters, 2 tasks)",
                      "fixed per-task bottleneck adapters, same shapes"),
}


def measure(pairs: list[str], steps: int, warmup: int, repeats: int, log=print) -> dict[str, Any]:
    sides: dict[str, dict[str, Callable[[], dict[str, float | None]]]] = {}
    student = ListStudent() if "list_selftrain" in pairs else None
    for pair in pairs:
        if pair == "cls_rl":
            sides[pair] = {"method": lambda: grpo_side(True, steps, warmup),
                           "plain": lambda: grpo_side(False, steps, warmup)}
        elif pair == "list_selftrain":
            sides[pair] = {"method": lambda: list_side(student, True, steps, warmup),
                           "plain": lambda: list_side(student, False, steps, warmup)}
        elif pair == "pet":
            sides[pair] = {"method": lambda: pet_side(steps, warmup),
                           "plain": lambda: classifier_side([], steps, warmup, lora=True, unlabelled_half=False)}
        elif pair == "mean_teacher":
            sides[pair] = {"method": lambda: classifier_side(["mean_teacher"], steps, warmup, lora=False,
                                                             unlabelled_half=True),
                           "plain": lambda: classifier_side([], steps, warmup, lora=False, unlabelled_half=True)}
        elif pair == "hyper_adapter":
            sides[pair] = {"method": lambda: hyper_side(True, steps, warmup),
                           "plain": lambda: hyper_side(False, steps, warmup)}
    runs: dict[str, dict[str, list[dict[str, float | None]]]] = {p: {"method": [], "plain": []} for p in pairs}
    for repeat in range(repeats):
        for pair in pairs:
            for side in ("method", "plain"):
                result = sides[pair][side]()
                runs[pair][side].append(result)
                log(f"  repeat {repeat} {pair:<15} {side:<6} step {result['step_s'] * 1e3:.1f} ms")
    out = {}
    for pair in pairs:
        summary = {}
        for side in ("method", "plain"):
            values = runs[pair][side]
            peaks = [v["peak_bytes"] for v in values if v["peak_bytes"] is not None]
            summary[side] = {"label": PAIRS[pair][0 if side == "method" else 1],
                             "step_s": common.median(v["step_s"] for v in values),
                             "step_s_repeats": [v["step_s"] for v in values],
                             "peak_bytes": max(peaks) if peaks else None}
            if "trainable_params" in values[0]:
                summary[side]["trainable_params"] = values[0]["trainable_params"]
        summary["step_ratio"] = common.ratio(summary["method"]["step_s"], summary["plain"]["step_s"])
        summary["memory_ratio"] = common.ratio(summary["method"]["peak_bytes"], summary["plain"]["peak_bytes"])
        out[pair] = summary
    return out


def markdown(result: dict[str, Any]) -> str:
    table = []
    for pair, row in result["pairs"].items():
        m, p = row["method"], row["plain"]
        spread = ", ".join(common.fmt(s * 1e3, ".0f") for s in m["step_s_repeats"]) + " vs " + ", ".join(
            common.fmt(s * 1e3, ".0f") for s in p["step_s_repeats"])
        table.append([f"`{pair}`", f"{m['label']} vs {p['label']}", common.fmt(m["step_s"] * 1e3, ".1f"),
                      common.fmt(p["step_s"] * 1e3, ".1f"), common.fmt(row["step_ratio"], ".2f"), spread,
                      common.fmt((m["peak_bytes"] or 0) / 2**20, ".0f"),
                      common.fmt((p["peak_bytes"] or 0) / 2**20, ".0f"),
                      common.fmt(row["memory_ratio"], ".2f")])
    notes = [f"\n`{pair}` trains {row['method']['trainable_params']:,} parameters (method) vs "
             f"{row['plain']['trainable_params']:,} (plain).\n"
             for pair, row in result["pairs"].items() if "trainable_params" in row["method"]]
    notes += [f"\n{', '.join(f'`{p}`' for p in earlier['pairs'])}: measured earlier, by `{earlier['command']}` at "
              f"commit `{earlier['git_commit']}` (a separate run, under other load); kept by `--merge`.\n"
              for earlier in result.get("merged_from", [])]
    return common.markdown_table(["pair", "method vs plain", "method step ms", "plain step ms", "step ratio",
                                  "per-repeat ms (method vs plain)", "method peak MB", "plain peak MB",
                                  "memory ratio"], table) + "\n" + "".join(notes)


def plot(result: dict[str, Any], path: str) -> str | None:
    """Each pair's step time and training peak memory as a multiple of its plain side (no floor: the plain side is
    the reference each method is compared with); ``None`` without matplotlib."""
    from benchmarks import plotting

    plt = common.pyplot()
    if plt is None:
        return None
    names = list(result["pairs"])
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.0 * len(names) + 4), 3.8))
    for ax, key, what in ((axes[0], "step_ratio", "step time"), (axes[1], "memory_ratio", "training peak memory")):
        plotting.ratio_bars(ax, names, {"method / plain": [result["pairs"][n].get(key) for n in names]},
                            f"{what}: method side / plain side", "plain side")
    fig.suptitle("Method vs its plain counterpart, same model and rows (CPU)", fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)


def merge_earlier(result: dict[str, Any], path: str) -> None:
    """Put the earlier file's other pairs after this run's, with the command and commit that measured them."""
    import json

    if not os.path.exists(path):
        return
    with open(path) as handle:
        earlier = json.load(handle)
    kept = {p: row for p, row in earlier["pairs"].items() if p not in result["pairs"]}
    if not kept:
        return
    sources = [{**e, "pairs": [p for p in e["pairs"] if p in kept]} for e in earlier.get("merged_from", [])]
    own = [p for p in earlier["config"]["pairs"] if p in kept]
    if own:
        sources.insert(0, {"pairs": own, "command": earlier["machine"].get("command"),
                           "git_commit": earlier["machine"].get("git_commit"), "config": earlier["config"]})
    result["pairs"] = {**kept, **result["pairs"]}
    result["merged_from"] = [s for s in sources if s["pairs"]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one repeat, two timed steps (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/pairs-cpu)")
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help=f"comma-separated pairs (default all: {', '.join(PAIRS)})")
    parser.add_argument("--steps", type=int, help="timed steps per side and repeat (default 8; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; smoke 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3; smoke 1)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--merge", action="store_true",
                        help="keep the pairs of the output folder's pairs.json that this run does not measure")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        parser.error(f"--pairs {','.join(unknown)}: no such pair; pairs are {', '.join(PAIRS)}")
    steps = args.steps or (2 if args.smoke else 8)
    warmup = args.warmup or (1 if args.smoke else 2)
    repeats = args.repeats or (1 if args.smoke else 3)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    sys.stdout.reconfigure(line_buffering=True)
    common.offline_environment()
    common.quiet_warnings()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join(common.RESULTS_DIR, "pairs-cpu")
    started = time.perf_counter()
    result = {
        "harness": "perf.pairs",
        "config": {"pairs": pairs, "steps": steps, "warmup": warmup, "repeats": repeats,
                   "order": "interleaved: every pair's method side then plain side, repeated"},
        "machine": common.machine_info("cpu", dirty=dirty),
        "memory_method": common.PeakMemory("cpu").method,
        "pairs": measure(pairs, steps, warmup, repeats),
    }
    result["elapsed_s"] = time.perf_counter() - started
    if args.merge:
        merge_earlier(result, os.path.join(out, "pairs.json"))
    published = common.publish(out, "pairs", result, markdown(result))
    plot(result, os.path.join(out, "pairs.png"))
    return published


if __name__ == "__main__":
    main()
