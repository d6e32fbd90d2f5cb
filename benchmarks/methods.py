"""The method table both harnesses read: one line per benchmarked configuration.

A row names the plugins to switch on (``ftplugins.compose(SFTTrainer, plugins, **options)``) and
their options, exactly as a user would. The baselines are rows too: full fine-tuning (no plugin,
AdamW on every weight) and PEFT LoRA (TRL's own ``peft_config=`` path). Adding a method to the
benchmarks is adding a row here; the harnesses have no per-method code. A row whose plugin is not
installed, fails to import, or rejects the row's options is skipped with the reason printed, so
rows for methods still being written can sit here before their plugin lands.

Most rows train on random token ids. A row whose plugin reads text columns (it tokenizes, packs, prefixes or
generates from the rows) names a :class:`TextRows` layout instead, and a row whose options depend on the
model or the batch shape (a module name, a minibatch size) computes them in ``sized_options``.

Rows whose note says "option names expected" were written before their plugin existed: when the
plugin lands and rejects them, the skip message names the valid options; fix the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextRows:
    """Random-text prompt/completion rows laid out to fill the benchmarked batch shape (perf harness).

    Each text character is one token of the benchmark tokenizer, so lengths are exact. A training sequence of
    ``tokens`` holds ``examples_per_sequence`` examples (or as many of ``example_tokens`` as fit); each example
    takes ``tokens // examples`` tokens: ``overhead`` of them are what the plugin adds around it (the EOS, a
    separator, a leading space), ``completion`` of the rest is the completion, the remainder the prompt.

    Attributes:
        examples_per_sequence: examples rendered into one training sequence (few-shot prefix: k + 1).
        example_tokens: when set, as many examples of this size as fit in the sequence (many-shot packing).
        completion: fraction of an example's tokens in the completion (the target).
        overhead: tokens per example beyond prompt + completion.
        packed: the plugin packs the examples of a sequence from the rows themselves, so rows x examples are
            needed; otherwise the extra examples come from elsewhere (a pool) and one row makes one sequence.
        extra_rows: rows the plugin holds out of the training rows (a few-shot pool).
        target_column: the completion's column name.
    """

    examples_per_sequence: int = 1
    example_tokens: int | None = None
    completion: float = 0.5
    overhead: int = 1
    packed: bool = False
    extra_rows: int = 0
    target_column: str = "completion"


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked configuration.

    Attributes:
        name: the row's name in tables (``bottleneck-pfeiffer``).
        plugins: plugin names (or plugin objects) for ``ftplugins.compose``.
        options: the plugins' options (prefixed keys, as on the command line).
        peft: a factory of a PEFT config handed to the trainer's ``peft_config=`` (the LoRA
            baselines); ``None`` for plugin rows and full fine-tuning.
        baseline: a reference row (always run, never skipped).
        floor: the perf harness's floor (``benchmarks/perf/floor.py``): the frozen base back-propagating to its
            inputs only, no trainer; every row's step time and memory are also shown as multiples of it.
        perf: measured by the performance harness.
        quality: fine-tuned by the quality harness.
        learning_rate: the quality harness's learning rate for this row (adapters need larger ones
            than full fine-tuning); ``None`` uses the harness's full fine-tuning rate.
        note: one line for the tables.
        dataset: the perf harness's training rows: ``None`` random token ids, or a :class:`TextRows` layout.
        sized_options: ``(model, shape) -> options`` merged over ``options`` by the perf harness, for options
            that depend on the model (a module name) or the batch shape (``shape.batch``, ``shape.tokens``).
        train_args: training arguments this row needs (e.g. ``{"max_grad_norm": 0.0}``), over both harnesses'
            ``SFTConfig`` (keys the harnesses do not set); a user passes them on the command line with the options.
        on_request: left out of a harness's default rows; runs only when ``--methods`` names it (rows that
            diagnose one claim, e.g. a paper's other setting, not needed in every table).
    """

    name: str
    plugins: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    peft: Callable[[], Any] | None = None
    baseline: bool = False
    floor: bool = False
    perf: bool = True
    quality: bool = True
    learning_rate: float | None = None
    note: str = ""
    dataset: TextRows | None = None
    sized_options: Callable[[Any, Any], dict[str, Any]] | None = None
    train_args: dict[str, Any] = field(default_factory=dict)
    on_request: bool = False


def lora(rank: int) -> Callable[[], Any]:
    """PEFT LoRA of rank ``rank`` on every linear layer except the output head, alpha = 2r."""

    def make():
        from peft import LoraConfig

        return LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )

    make.__name__ = f"lora_r{rank}"
    return make


def s3ft_budget(model: Any, shape: Any) -> dict[str, Any]:
    """S3FT's generation budget: the sequence length, twice the gold answer of :class:`TextRows` (the recipe gives
    48 tokens for ~30-token answers). The random model rarely stops early, so each row costs that many tokens for
    the answer and as many for the paraphrase."""
    return {"s3ft_max_new_tokens": shape.tokens}


def locft_module(model: Any, shape: Any) -> dict[str, Any]:
    """LocFT's module at the paper's depth (layer 22 of Llama-3-8B's 32: 2/3) and one minibatch = the batch
    (LocFT sets the batch size from ``locft_batch_size``)."""
    layer = 2 * model.config.num_hidden_layers // 3
    return {"locft_modules": f"model.layers.{layer}.mlp.down_proj", "locft_batch_size": shape.batch}


# Learning rates of the quality harness (tiny pre-trained decoder, Adam-style optimizers).
FULL_LR = 3e-4
ADAPTER_LR = 2e-3

METHODS: list[MethodSpec] = [
    # --- baselines -------------------------------------------------------------------------------
    MethodSpec("floor", baseline=True, floor=True, quality=False,
               note="frozen base, backward to the inputs only: no weight gradients, no optimizer (a lower bound)"),
    MethodSpec("full", baseline=True, note="full fine-tuning, AdamW on every weight"),
    MethodSpec("lora-r8", peft=lora(8), baseline=True, learning_rate=ADAPTER_LR, note="PEFT LoRA r=8, all linear"),
    MethodSpec("lora-r16", peft=lora(16), baseline=True, learning_rate=ADAPTER_LR, note="PEFT LoRA r=16, all linear"),
    # SSF's budget (one scale and shift per channel) is LoRA r=1's order: the "similar budget" of SSF's claim.
    MethodSpec("lora-r1", peft=lora(1), learning_rate=ADAPTER_LR, perf=False, on_request=True,
               note="PEFT LoRA r=1, all linear (SSF's parameter budget)"),
    # --- shipped methods -------------------------------------------------------------------------
    # SSF trains only per-channel scales and shifts; like the paper (which uses large rates), it needs a higher one.
    MethodSpec("ssf", ("ssf",), learning_rate=5 * ADAPTER_LR, note="scale and shift every feature (PEFT tuner)"),
    # Prompt/completion rows: Masked Thought masks response inputs only, and refuses rows that cannot tell them apart.
    MethodSpec("masked_thought", ("masked_thought",), {"masked_thought_ratio": 0.2}, dataset=TextRows(),
               note="full fine-tuning + Masked Thought collator (p=0.2)"),
    # The paper's GSM8K setting: p_max 0.4 (random-token replacement, p ramped over 2/3 of training: the defaults).
    MethodSpec("masked_thought-p04", ("masked_thought",), {"masked_thought_ratio": 0.4}, dataset=TextRows(),
               perf=False, on_request=True, note="full fine-tuning + Masked Thought collator (p=0.4, GSM8K setting)"),
    # The paper's MetaMath setting: a `<mask>` token (added, mean-initialised embedding) replaces masked inputs; p 0.2.
    MethodSpec("masked_thought-mask", ("masked_thought",),
               {"masked_thought_ratio": 0.2, "masked_thought_variant": "mask_token"}, dataset=TextRows(), perf=False,
               on_request=True,
               note="full fine-tuning + Masked Thought collator (mask token `<mask>`, p=0.2, MetaMath setting)"),
    # --- adapters (issue 3); bottleneck size d/16 as AdapterHub's reduction factor 16 --------------
    MethodSpec("bottleneck-series", ("bottleneck",),
               {"bottleneck_preset": "llm_adapters_series", "bottleneck_reduction_factor": 16},
               learning_rate=ADAPTER_LR, note="LLM-Adapters series: input side of up/gate, output side of down"),
    MethodSpec("bottleneck-parallel", ("bottleneck",),
               {"bottleneck_preset": "llama_parallel", "bottleneck_reduction_factor": 16},
               learning_rate=ADAPTER_LR, note="LLM-Adapters LLaMA parallel recipe (up/down)"),
    # AdapterHub's configurations as block placements on the decoder (PETL-AST presets; reduction 16, ReLU, norms
    # frozen as AdapterHub leaves them): SeqBn = series after the FFN, DoubleSeqBn = series after attention and FFN,
    # ParBn = parallel to the FFN from its input, scaling 4.
    MethodSpec("bottleneck-pfeiffer", ("bottleneck",),
               {"bottleneck_preset": "pfeiffer", "bottleneck_block_mode": "sequential", "bottleneck_activation": "relu",
                "bottleneck_train_norms": False, "bottleneck_reduction_factor": 16},
               learning_rate=ADAPTER_LR, note="series adapter after the FFN of every block (≈ AdapterHub SeqBn)"),
    MethodSpec("bottleneck-houlsby", ("bottleneck",),
               {"bottleneck_preset": "houlsby", "bottleneck_block_mode": "sequential", "bottleneck_activation": "relu",
                "bottleneck_train_norms": False, "bottleneck_reduction_factor": 16},
               learning_rate=ADAPTER_LR, note="series adapters after attention and FFN (≈ AdapterHub DoubleSeqBn)"),
    MethodSpec("bottleneck-parbn", ("bottleneck",),
               {"bottleneck_preset": "pfeiffer", "bottleneck_block_mode": "parallel", "bottleneck_activation": "relu",
                "bottleneck_scaling": 4.0, "bottleneck_train_norms": False, "bottleneck_reduction_factor": 16},
               learning_rate=ADAPTER_LR, note="parallel adapter beside the FFN, from its input (≈ AdapterHub ParBn)"),
    MethodSpec("block_lora", ("block_lora",),
               {"block_lora_r": 16, "block_lora_target_modules": ["all-linear"], "block_lora_dropout": 0.0},
               learning_rate=ADAPTER_LR, note="Block-LoRA r=16, n=8 shared down blocks, all linear"),
    # --- sparse fine-tuning (issue 4) --------------------------------------------------------------
    MethodSpec("lift-5pct", ("lift",), {"lift_density": 0.05}, note="LIFT, top 5% principal weights per matrix"),
    MethodSpec("lift-lora-budget", ("lift",), {"lift_budget_rank": 16},
               note="LIFT, (m+n)·16 entries per matrix (LoRA r=16's count)"),
    # LIFT's approximation rank at the paper's proportions (issue 20's diagnosis of "LIFT >= LoRA"): the paper
    # keeps r_f = 64 for a 4096-wide LLaMA-2-7B at budget rank 128, i.e. r_f = d/64 and r_f = r/2; the default 128
    # is near full rank on a 256-wide model, where principal weights are just the largest ones.
    MethodSpec("lift-rf4", ("lift",), {"lift_budget_rank": 16, "lift_rank": 4}, perf=False, on_request=True,
               note="LIFT at LoRA r=16's count, rank-4 approximation (the paper's r_f = d/64 at d = 256)"),
    MethodSpec("lift-rf8", ("lift",), {"lift_budget_rank": 16, "lift_rank": 8}, perf=False, on_request=True,
               note="LIFT at LoRA r=16's count, rank-8 approximation (the paper's r_f = r/2)"),
    # The paper's sparse baselines at lift-5pct's count (issue 20's diagnosis of "LIFT forgets less"): is the
    # forgetting LIFT's choice of entries, or any 5% trained at the rate the target needs?
    MethodSpec("sparse-5pct-magnitude", ("lift",), {"lift_density": 0.05, "lift_selection": "magnitude"}, perf=False,
               on_request=True, note="the largest 5% of |W| per matrix (the paper's magnitude baseline)"),
    MethodSpec("sparse-5pct-random", ("lift",), {"lift_density": 0.05, "lift_selection": "random"}, perf=False,
               on_request=True, note="a seeded random 5% per matrix (the paper's random sparse baseline)"),
    MethodSpec("lift-lean", ("lift",), {"lift_budget_rank": 16, "lift_step_in_backward": True, "lift_save_delta": False},
               train_args={"max_grad_norm": 0.0}, quality=False,
               note="lift-lora-budget updated inside the backward, no delta (no θ0), no clipping"),
    MethodSpec("hft", ("hft",), {}, note="Half Fine-Tuning: half of every block trains"),
    # Phase 1 (full fine-tuning, as many steps as phase 2) runs inside train() before the timed steps: the
    # perf harness times phase 2 but its memory peak includes phase 1; the quality budget is 2x the others'.
    MethodSpec("lt_sft", ("lt_sft",), {"lt_sft_proportion": 0.01}, note="LT-SFT, 1% of the entries (phase 2)"),
    MethodSpec("sara", ("sara",), {}, note="SaRA, entries with abs(θ0) < 2e-3"),
    # --- objectives / data (issue 5): timed here on random-text rows; quality scenarios of their own ----
    # Much of their cost is before the first step, in the perf table's "setup" column (trainer construction until
    # the first step, for batch x (warm-up + timed steps) rows): s3ft's generation, deep_align's reference pass,
    # the dataset transforms. The step columns time what every step does.
    MethodSpec("deep_align", ("deep_align",), {}, quality=False, dataset=TextRows(),
               note="token-wise constrained SFT; reference log-probs precomputed (setup: a no-grad pass)"),
    MethodSpec("deep_align-otf", ("deep_align",), {"deep_align_ref": "on_the_fly"}, quality=False, dataset=TextRows(),
               note="token-wise constrained SFT; frozen reference copy, + a no-grad forward per step"),
    MethodSpec("many_icl", ("many_icl",), {}, quality=False, dataset=TextRows(example_tokens=8, packed=True),
               note="many-shot packing (8-token shots up to max_length), loss on every answer"),
    MethodSpec("s3ft", ("s3ft",), {}, quality=False, dataset=TextRows(), sized_options=s3ft_budget,
               note="setup: greedy answer + paraphrase of every row (budget 2x the gold answer); steps: SFT"),
    MethodSpec("locft", ("locft",), {}, quality=False, dataset=TextRows(completion=0.125, overhead=2, target_column="target"),
               sized_options=locft_module, note="one down_proj at 2/3 depth trains (model editing), per-sample loss"),
    MethodSpec("fewshot_prefix", ("fewshot_prefix",), {}, quality=False,
               dataset=TextRows(examples_per_sequence=5, overhead=2, extra_rows=32),
               note="k=4 pool examples before every prompt (5 examples per sequence), loss on the answer"),
]

BY_NAME = {spec.name: spec for spec in METHODS}


def select(names: str | None, harness: str, baselines: str | None = None) -> list[MethodSpec]:
    """The rows named in ``names`` (comma-separated; default: every row for ``harness``), baselines first.

    ``baselines`` (comma-separated) narrows the baseline rows added (default: all of them).
    """
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            raise SystemExit(
                f"--methods {','.join(unknown)}: no such row; rows are {', '.join(BY_NAME)} "
                "(add one to benchmarks/methods.py)."
            )
        chosen = [BY_NAME[n] for n in wanted]
    else:
        chosen = [s for s in METHODS if getattr(s, harness) and not s.on_request]
    wanted_baselines = None if baselines is None else {n.strip() for n in baselines.split(",") if n.strip()}
    added = [s for s in METHODS if s.baseline and getattr(s, harness) and s not in chosen
             and (wanted_baselines is None or s.name in wanted_baselines)]
    return added + chosen


def unavailable_reason(spec: MethodSpec) -> str | None:
    """Why ``spec`` cannot run here (plugin missing, failing to import, options rejected), or ``None``."""
    if not spec.plugins:
        return None
    from ftplugins import registry
    from ftplugins.options import build_options

    try:
        plugins = registry.select(list(spec.plugins))
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin in progress means "skip"
        return f"plugin not loadable ({type(exc).__name__}: {exc})"
    try:
        build_options(plugins, spec.options)
    except Exception as exc:  # noqa: BLE001
        return f"the plugin rejects this row's options ({exc}); fix the row in benchmarks/methods.py"
    return None
