"""The method table both harnesses read: one line per benchmarked configuration.

A row names the plugins to switch on (``ftplugins.compose(SFTTrainer, plugins, **options)``) and
their options, exactly as a user would. The baselines are rows too: full fine-tuning (no plugin,
AdamW on every weight) and PEFT LoRA (TRL's own ``peft_config=`` path). Adding a method to the
benchmarks is adding a row here; the harnesses have no per-method code. A row whose plugin is not
installed, fails to import, or rejects the row's options is skipped with the reason printed, so
rows for methods still being written can sit here before their plugin lands.

Rows whose note says "option names expected" were written before their plugin existed: when the
plugin lands and rejects them, the skip message names the valid options; fix the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
        perf: measured by the performance harness.
        quality: fine-tuned by the quality harness.
        learning_rate: the quality harness's learning rate for this row (adapters need larger ones
            than full fine-tuning); ``None`` uses the harness's full fine-tuning rate.
        note: one line for the tables.
    """

    name: str
    plugins: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    peft: Callable[[], Any] | None = None
    baseline: bool = False
    perf: bool = True
    quality: bool = True
    learning_rate: float | None = None
    note: str = ""


def lora(rank: int) -> Callable[[], Any]:
    """PEFT LoRA of rank ``rank`` on every linear layer except the output head, alpha = 2r."""

    def make():
        from peft import LoraConfig

        return LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )

    make.__name__ = f"lora_r{rank}"
    return make


# Learning rates of the quality harness (tiny pre-trained decoder, Adam-style optimizers).
FULL_LR = 3e-4
ADAPTER_LR = 2e-3

METHODS: list[MethodSpec] = [
    # --- baselines -------------------------------------------------------------------------------
    MethodSpec("full", baseline=True, note="full fine-tuning, AdamW on every weight"),
    MethodSpec("lora-r8", peft=lora(8), baseline=True, learning_rate=ADAPTER_LR, note="PEFT LoRA r=8, all linear"),
    MethodSpec("lora-r16", peft=lora(16), baseline=True, learning_rate=ADAPTER_LR, note="PEFT LoRA r=16, all linear"),
    # --- shipped methods -------------------------------------------------------------------------
    # SSF trains only per-channel scales and shifts; like the paper (which uses large rates), it needs a higher one.
    MethodSpec("ssf", ("ssf",), learning_rate=5 * ADAPTER_LR, note="scale and shift every feature (PEFT tuner)"),
    MethodSpec("masked_thought", ("masked_thought",), {"masked_thought_ratio": 0.2},
               note="full fine-tuning + Masked Thought collator (p=0.2)"),
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
    MethodSpec("hft", ("hft",), {}, note="Half Fine-Tuning: half of every block trains"),
    # Phase 1 (full fine-tuning, as many steps as phase 2) runs inside train() before the timed steps: the
    # perf harness times phase 2 but its memory peak includes phase 1; the quality budget is 2x the others'.
    MethodSpec("lt_sft", ("lt_sft",), {"lt_sft_proportion": 0.01}, note="LT-SFT, 1% of the entries (phase 2)"),
    MethodSpec("sara", ("sara",), {}, note="SaRA, entries with abs(θ0) < 2e-3"),
    # --- objectives / data (issue 5): quality scenarios of their own, not timed here --------------
    MethodSpec("many_icl", ("many_icl",), {}, perf=False, quality=False, note="many-shot in-context fine-tuning"),
    MethodSpec("deep_align", ("deep_align",), {}, perf=False, quality=False, note="token-wise constrained objective"),
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
        chosen = [s for s in METHODS if getattr(s, harness)]
    wanted_baselines = None if baselines is None else {n.strip() for n in baselines.split(",") if n.strip()}
    added = [s for s in METHODS if s.baseline and s not in chosen
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
