"""Step time, training-phase memory, optimizer state and merged inference of every method, in one process.

What is timed is what users get: each configuration trains through the real trainer path,
``ftplugins.compose(SFTTrainer, plugins, **options)`` (the LoRA baselines through TRL's own
``peft_config=``), calling ``trainer.train()`` for ``warmup + steps`` optimizer steps. A
:class:`StepTimer` callback stamps every ``on_step_begin`` / ``on_step_end``; the *step time* of
step i is the wall time between the ends of steps i-1 and i, so it includes fetching and collating
the batch (where a collator plugin such as masked_thought works), forward, backward, clipping, the
optimizer and the scheduler. Warm-up steps are discarded. The *compute* time (begin to end of a
step) is recorded beside it, and the *setup* time (building the trainer until the first step begins:
dataset transforms, a plugin's generation or reference pass, optimizer construction) once per run.

Rows train on random token ids, or on random-text prompt/completion rows (a row's ``TextRows``
layout) when their plugin reads text; options that depend on the model or the batch shape come from
the row's ``sized_options``.

The ``floor`` row is the exception: the frozen base back-propagating to its inputs only, in a plain loop
(:mod:`benchmarks.perf.floor`), the least any parameter-efficient step costs; every row is also a multiple of it.

Repetitions are interleaved (for each repetition, every method once) so that drifting machine
load spreads over all methods instead of biasing one; every run starts from a fresh copy of the
same base model.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import PeakMemory, median, release_memory, synchronize
from benchmarks.methods import MethodSpec, TextRows

#: Llama shapes by name (fp32). Vocabulary: the locally trained tiny tokenizer's (~320 ids) unless
#: the row sets one, so the 85M model's parameters sit in the transformer blocks, not the embeddings.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 4},
    "85m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_key_value_heads": 12},
    "85m-vocab32k": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                         "num_key_value_heads": 12, "vocab_size": 32000},
}

TRL_PLAIN = MethodSpec("trl-plain", note="plain TRL SFTTrainer, full fine-tuning, no ftplugins (overhead reference)")


def noop_plugin():
    """A plugin that answers every hook with the neutral value: what the hook machinery alone costs."""
    from ftplugins import Plugin, hookimpl

    class NoopPlugin(Plugin):
        name = "noop"
        summary = "answers every hook with the neutral value"
        paper = "n/a (benchmark)"

        @hookimpl
        def trainer_mixins(self, run):
            return []

        @hookimpl
        def validate(self, run):
            return None

        @hookimpl
        def model_init_kwargs(self, run):
            return {}

        @hookimpl
        def transform_dataset(self, run, dataset, split):
            return dataset

        @hookimpl
        def callbacks(self, run):
            return []

        @hookimpl
        def prepare_model(self, run, model):
            return model

        @hookimpl
        def data_collator(self, run, collator):
            return collator

        @hookimpl
        def post_train(self, run, trainer):
            return None

    return NoopPlugin()


def overhead_specs() -> list[MethodSpec]:
    return [TRL_PLAIN, MethodSpec("noop-plugin", (noop_plugin(),), note="full fine-tuning + a no-op plugin")]


@dataclass
class Shape:
    batch: int
    tokens: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        try:
            batch, tokens = (int(x) for x in text.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--batch {text!r}: expected BATCHxTOKENS, e.g. 1x32 or 4x128") from None
        return cls(batch, tokens)

    def __str__(self) -> str:
        return f"{self.batch}x{self.tokens}"


@dataclass
class RunResult:
    """One training run of one method (one repetition)."""

    step_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    setup_s: float = math.nan
    peak_bytes: float | None = None
    trainable_params: int = 0
    trainable_bytes: int = 0
    optimizer_state_bytes: int = 0
    inference_unmerged_s: float | None = None
    inference_merged_s: float | None = None
    merge: str = ""


def build_model(name: str, seed: int = 0):
    """A randomly initialised Llama of shape ``MODELS[name]`` (head_dim = hidden / heads), fp32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftplugins.testing import tiny_tokenizer

    if name not in MODELS:
        raise SystemExit(f"--model {name}: unknown; choose one of {', '.join(MODELS)}")
    shape = dict(MODELS[name])
    tokenizer = tiny_tokenizer()
    shape.setdefault("vocab_size", len(tokenizer))
    # Built from a full config rather than by overriding a small one, so head_dim follows the shape.
    config = LlamaConfig(
        max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def random_dataset(shape: Shape, rows: int, vocab: int, seed: int):
    """``rows`` sequences of ``shape.tokens`` uniformly random ids (already tokenized: TRL skips its tokenizer)."""
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    # Ids 5.. skip the special tokens so that no sequence carries an early EOS or padding.
    ids = torch.randint(5, vocab, (rows, shape.tokens), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist()})


def single_token_alphabet(tokenizer) -> str:
    """Letters and digits that the tokenizer maps to one token each and no two of which merge, so that a string
    of n of them is exactly n tokens."""
    import string

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    alphabet: list[str] = []
    for char in string.ascii_letters + string.digits:
        if count(char) == 1 and all(count(char + other) == 2 and count(other + char) == 2
                                    for other in [*alphabet, char]):
            alphabet.append(char)
    if len(alphabet) < 8:
        raise SystemExit(f"the benchmark tokenizer has only {len(alphabet)} non-merging single-token characters; "
                         "TextRows needs a byte-level tokenizer like ftplugins.testing.tiny_tokenizer")
    return "".join(alphabet)


def text_dataset(layout: TextRows, shape: Shape, rows: int, tokenizer, seed: int):
    """Random-text prompt/completion rows laid out by ``layout`` so that each of ``rows`` training sequences
    fills ``shape.tokens`` (see :class:`benchmarks.methods.TextRows`)."""
    import random

    from datasets import Dataset

    alphabet = single_token_alphabet(tokenizer)
    examples = layout.examples_per_sequence
    if layout.example_tokens:
        examples = max(1, shape.tokens // layout.example_tokens)
    budget = shape.tokens // examples - layout.overhead  # prompt + completion tokens of one example
    if budget < 2:
        raise SystemExit(f"{shape}: {examples} examples per sequence leave no room for a prompt and a completion")
    completion = min(budget - 1, max(1, round(layout.completion * budget)))
    prompt = budget - completion
    count = rows * (examples if layout.packed else 1) + layout.extra_rows
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    pairs = [(text(prompt), text(completion)) for _ in range(count)]
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], layout.target_column: [c for _, c in pairs]})


def make_step_timer(device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock stamps of every optimizer step (synchronised on GPU)."""

        def __init__(self):
            self.begins: list[float] = []
            self.ends: list[float] = []
            self.first_train_begin: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.train_begin = time.perf_counter()
            if self.first_train_begin is None:  # a method that trains twice (lt_sft's phase 1) begins twice
                self.first_train_begin = self.train_begin

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.ends.append(time.perf_counter())

        def timed(self, warmup: int) -> tuple[list[float], list[float]]:
            ends = [self.train_begin, *self.ends]
            step = [ends[i + 1] - ends[i] for i in range(warmup, len(self.ends))]
            compute = [e - b for b, e in zip(self.begins[warmup:], self.ends[warmup:])]
            return step, compute

    return StepTimer()


def forward_seconds(model, input_ids, device: str, repeats: int) -> float:
    """Median wall time of a no-grad forward pass on a fixed batch (after one untimed pass)."""
    import torch

    model.eval()
    times = []
    with torch.inference_mode():
        model(input_ids=input_ids)
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            model(input_ids=input_ids)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return median(times)


def state_bytes(optimizer) -> int:
    """Bytes of every tensor the optimizer keeps between steps (moments, step counters, masks, ...); a tensor
    shared by two state entries (the sparse engine's indices and origin indices) is counted once."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    seen, total = set(), 0
    for per_param in inner.state.values():
        values = per_param.values() if isinstance(per_param, dict) else [per_param]
        for value in values:
            if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total


def sparse_engine_of(optimizer):
    """The sparse engine's optimizer inside ``optimizer`` (it trains selected entries of whole tensors), or None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if hasattr(inner, "selected_numel") else None


def sft_args(output_dir: str, device: str, shape: Shape, max_steps: int, seed: int, extra: dict | None = None):
    """The training arguments of every row: TRL's defaults (activation checkpointing on) plus what the run fixes."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        use_cpu=not device.startswith("cuda"),
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        max_steps=max_steps,
        per_device_train_batch_size=shape.batch,
        max_length=shape.tokens,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        **(extra or {}),
    )


def train_once(
    spec: MethodSpec,
    template,
    tokenizer,
    dataset,
    shape: Shape,
    probe_ids,
    *,
    device: str,
    warmup: int,
    steps: int,
    inference_repeats: int,
    seed: int,
) -> RunResult:
    """Train a fresh copy of ``template`` with ``spec`` and measure it."""
    from peft import PeftModel
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    import ftplugins

    if spec.floor:
        from benchmarks.perf.floor import floor_once

        # The rows' own training arguments: the floor keeps their activation policy (TRL checkpoints by default).
        return floor_once(template, dataset, shape, probe_ids, sft_args("unused", device, shape, warmup + steps, seed),
                          device=device, warmup=warmup, steps=steps,
                          inference_repeats=inference_repeats, result_cls=RunResult, forward_seconds=forward_seconds)
    model = copy.deepcopy(template)
    timer = make_step_timer(device)
    options = {**spec.options, **(spec.sized_options(model, shape) if spec.sized_options else {})}
    setup_started = time.perf_counter()
    trainer_cls = SFTTrainer if spec is TRL_PLAIN else ftplugins.compose(SFTTrainer, list(spec.plugins), **options)
    with tempfile.TemporaryDirectory(prefix="ftplugins-perf-") as output_dir:
        args = sft_args(output_dir, device, shape, warmup + steps, seed, spec.train_args)
        kwargs = {"peft_config": spec.peft()} if spec.peft is not None else {}
        trainer = trainer_cls(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer], **kwargs
        )
        trainer.remove_callback(PrinterCallback)  # the end-of-training metrics print is noise here
        memory = PeakMemory(device)
        memory.reset()
        trainer.train()
        result = RunResult(peak_bytes=memory.peak_above_base())
        result.step_s, result.compute_s = timer.timed(warmup)
        result.setup_s = timer.first_train_begin - setup_started

        trained = trainer.model
        trainable = [p for p in trained.parameters() if p.requires_grad]
        result.trainable_params = sum(p.numel() for p in trainable)
        result.trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
        engine = sparse_engine_of(trainer.optimizer)
        if engine is not None:  # whole tensors require grad, only the selected entries train
            result.trainable_params = engine.selected_numel()
            result.trainable_bytes = result.trainable_params * 4  # the compact gradient, fp32
        result.optimizer_state_bytes = state_bytes(trainer.optimizer)

        if isinstance(trained, PeftModel):
            result.inference_unmerged_s = forward_seconds(trained, probe_ids, device, inference_repeats)
            try:
                merged = trained.merge_and_unload()
            except Exception as exc:  # noqa: BLE001 - a tuner that cannot merge is a result, not a crash
                result.merge = f"no merge ({type(exc).__name__}: {str(exc)[:120]})"
            else:
                result.inference_merged_s = forward_seconds(merged, probe_ids, device, inference_repeats)
                result.merge = "merged"
                del merged
        else:
            result.inference_merged_s = forward_seconds(trained, probe_ids, device, inference_repeats)
            result.merge = "base architecture"
        del trainer, trained, model, trainable
    release_memory()
    return result


def measure_shape(
    specs: list[MethodSpec],
    template,
    tokenizer,
    shape: Shape,
    *,
    device: str,
    warmup: int,
    steps: int,
    repeats: int,
    inference_repeats: int,
    seed: int,
    log=print,
) -> dict[str, Any]:
    """Every spec on one batch shape, repetitions interleaved; raw runs and their summary."""
    import torch

    vocab = template.get_input_embeddings().num_embeddings
    rows = shape.batch * (warmup + steps)
    datasets = {None: random_dataset(shape, rows, vocab, seed)}  # by TextRows layout; None: random token ids
    for spec in specs:
        if spec.dataset not in datasets:
            datasets[spec.dataset] = text_dataset(spec.dataset, shape, rows, tokenizer, seed)
    probe = torch.randint(5, vocab, (shape.batch, shape.tokens), generator=torch.Generator().manual_seed(seed + 1))
    template.to(device)
    probe = probe.to(device)

    runs: dict[str, list[RunResult]] = {s.name: [] for s in specs}
    errors: dict[str, str] = {}
    base_forward: list[float] = []
    # One untimed run first: the process's first trainer pays one-off costs (lazy imports, allocator
    # growth, kernel selection) that would otherwise land on whichever row comes first.
    first = next((s for s in specs if not s.floor), specs[0])  # the floor runs no trainer: it warms up nothing
    train_once(first, template, tokenizer, datasets[first.dataset], shape, probe, device=device, warmup=1,
               steps=1, inference_repeats=1, seed=seed)
    for rep in range(repeats):
        base_forward.append(forward_seconds(template, probe, device, inference_repeats))
        for spec in specs:
            if spec.name in errors:
                continue
            started = time.perf_counter()
            try:
                run = train_once(spec, template, tokenizer, datasets[spec.dataset], shape, probe, device=device,
                                 warmup=warmup,
                                 steps=steps, inference_repeats=inference_repeats, seed=seed)
            except Exception as exc:
                if spec.baseline or spec.name in ("trl-plain", "noop-plugin"):
                    raise
                errors[spec.name] = f"{type(exc).__name__}: {exc}"
                log(f"  [{shape}] {spec.name}: FAILED, dropped from this run: {errors[spec.name]}")
                release_memory()
                continue
            runs[spec.name].append(run)
            log(f"  [{shape}] rep {rep + 1}/{repeats} {spec.name:<22} step {median(run.step_s) * 1e3:8.1f} ms  "
                f"peak +{_mb(run.peak_bytes):8.1f} MB  setup {run.setup_s:6.2f} s  "
                f"({time.perf_counter() - started:.1f} s)")
    return {"runs": runs, "errors": errors, "base_forward_s": base_forward}


def summarize(specs: list[MethodSpec], measured: dict[str, Any]) -> dict[str, Any]:
    """Medians per method and their ratios to full fine-tuning, to LoRA r=16 and to the floor (when it ran)."""
    base_forward = median(measured["base_forward_s"])
    rows: dict[str, Any] = {}
    for spec in specs:
        runs: list[RunResult] = measured["runs"].get(spec.name) or []
        if not runs:
            if spec.name in measured["errors"]:
                rows[spec.name] = {"status": "error", "reason": measured["errors"][spec.name], "note": spec.note}
            continue
        first = runs[0]
        rows[spec.name] = {
            "status": "ok",
            "note": spec.note,
            "plugins": [p if isinstance(p, str) else p.name for p in spec.plugins],
            "options": spec.options,
            "step_s": median(s for r in runs for s in r.step_s),
            "step_s_per_rep": [median(r.step_s) for r in runs],
            "compute_s": median(s for r in runs for s in r.compute_s),
            "setup_s": median(r.setup_s for r in runs),
            "setup_s_per_rep": [r.setup_s for r in runs],
            "dataset": "random token ids" if spec.dataset is None else f"random text, {spec.dataset}",
            "peak_train_bytes": median(r.peak_bytes for r in runs if r.peak_bytes is not None),
            "peak_train_bytes_per_rep": [r.peak_bytes for r in runs],
            "trainable_params": first.trainable_params,
            "trainable_bytes": first.trainable_bytes,
            "optimizer_state_bytes": first.optimizer_state_bytes,
            "persistent_bytes": first.trainable_bytes + first.optimizer_state_bytes,
            "inference_unmerged_s": median(r.inference_unmerged_s for r in runs if r.inference_unmerged_s),
            "inference_merged_s": median(r.inference_merged_s for r in runs if r.inference_merged_s),
            "merge": first.merge,
            "raw_step_s": [r.step_s for r in runs],
        }
        if spec.name in measured["errors"]:
            rows[spec.name]["status"] = "error after some repetitions"
            rows[spec.name]["reason"] = measured["errors"][spec.name]
    for row in rows.values():
        if row["status"] == "error":
            continue
        for ref in ("full", "lora-r16", "floor"):
            if ref == "floor" and "floor" not in rows:
                continue
            other = rows.get(ref, {})
            row[f"step_vs_{ref}"] = _ratio(row.get("step_s"), other.get("step_s"))
            row[f"memory_vs_{ref}"] = _ratio(row.get("peak_train_bytes"), other.get("peak_train_bytes"))
            row[f"persistent_vs_{ref}"] = _ratio(row.get("persistent_bytes"), other.get("persistent_bytes"))
        served = row["inference_merged_s"] if math.isfinite(row["inference_merged_s"]) else row["inference_unmerged_s"]
        row["inference_vs_base"] = _ratio(served, base_forward)
    overhead = {}
    if "trl-plain" in rows and "noop-plugin" in rows:
        overhead = {
            "noop_plugin_vs_trl_step": _ratio(rows["noop-plugin"]["step_s"], rows["trl-plain"]["step_s"]),
            "ftplugins_full_vs_trl_step": _ratio(rows.get("full", {}).get("step_s"), rows["trl-plain"]["step_s"]),
        }
    return {"base_inference_s": base_forward, "methods": rows, "overhead": overhead}


def _ratio(a, b) -> float:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return math.nan
    return a / b


def _mb(value: float | None) -> float:
    return math.nan if value is None else value / 2**20


def cli_startup_seconds(runs: int) -> dict[str, Any]:
    """Wall time of ``ftplugins list`` in a subprocess, minus a bare interpreter's start-up (medians)."""

    def wall(argv: list[str]) -> list[float]:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            times.append(time.perf_counter() - start)
        return times

    listing = wall([sys.executable, "-m", "ftplugins.cli", "list"])
    bare = wall([sys.executable, "-c", "pass"])
    return {
        "ftplugins_list_s": median(listing),
        "python_pass_s": median(bare),
        "ftplugins_list_minus_startup_s": median(listing) - median(bare),
        "runs": runs,
        "command": "python -m ftplugins.cli list (vs python -c pass)",
    }
