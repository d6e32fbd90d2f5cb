"""The quality harness's scenarios beyond ``target``: one module each, selected with ``--scenario``.

Each module exposes ``NAME`` (the claims' scenario key), ``TITLE``, ``DESIGN`` and ``run(ctx)``; see
:mod:`._common` for the result's shape. Optional ``PLOT_METRICS``: the metric keys its figure
``scenario-NAME.png`` shows (default: every metric of its table).
"""

from __future__ import annotations

import importlib

#: scenario name -> module (imported when run). ``target`` is the method table of ``__main__`` itself.
MODULES = {
    "alignment": "benchmarks.quality.scenarios.alignment",
    "alignment-erode": "benchmarks.quality.scenarios.alignment_erode",
    "alignment-erode-high-lr": "benchmarks.quality.scenarios.alignment_erode_high_lr",
    "alignment-erode-between": "benchmarks.quality.scenarios.alignment_erode_between",
    "alignment-pretrained-refusal": "benchmarks.quality.scenarios.alignment_pretrained_refusal",
    "alignment-attack": "benchmarks.quality.scenarios.alignment_attack",
    "many-shot": "benchmarks.quality.scenarios.many_shot",
    "grafting": "benchmarks.quality.scenarios.grafting",
    "grafting-partial": "benchmarks.quality.scenarios.grafting_partial",
    "grafting-sgd": "benchmarks.quality.scenarios.grafting_sgd",
    "grafting-partial-sgd": "benchmarks.quality.scenarios.grafting_partial_sgd",
    "composition": "benchmarks.quality.scenarios.composition",
    "composition-long-language": "benchmarks.quality.scenarios.composition_long_language",
    "composition-bilingual": "benchmarks.quality.scenarios.composition_bilingual",
    "composition-bilingual-equal": "benchmarks.quality.scenarios.composition_bilingual_equal",
    "minilm-classification": "benchmarks.quality.scenarios.minilm_classification",
    "block-lora-scale": "benchmarks.quality.scenarios.block_lora_scale",
    "minilm-shift": "benchmarks.quality.scenarios.minilm_shift",
    "minilm-shift-plain": "benchmarks.quality.scenarios.minilm_shift_plain",
    "self-generated": "benchmarks.quality.scenarios.self_generated",
    "self-generated-partial": "benchmarks.quality.scenarios.self_generated_partial",
    "few-shot-sft": "benchmarks.quality.scenarios.few_shot_sft",
    "few-shot-sft-icl": "benchmarks.quality.scenarios.few_shot_sft_icl",
    "editing": "benchmarks.quality.scenarios.editing",
    "editing-layer": "benchmarks.quality.scenarios.editing_layer",
    "editing-located": "benchmarks.quality.scenarios.editing_located",
    "data-selection": "benchmarks.quality.scenarios.data_selection",
    "fm3-multitask": "benchmarks.quality.scenarios.fm3_multitask",
    "fm3-diagnosis": "benchmarks.quality.scenarios.fm3_diagnosis",
    "fm3-multitask-long": "benchmarks.quality.scenarios.fm3_long",
    "fm3-optimizer": "benchmarks.quality.scenarios.fm3_optimizer",
    "pso-style": "benchmarks.quality.scenarios.pso_style",
    "bob-synthetic": "benchmarks.quality.scenarios.bob_synthetic",
    "bob-synthetic-capable": "benchmarks.quality.scenarios.bob_synthetic_capable",
    "gan-augment": "benchmarks.quality.scenarios.gan_augment",
    "gan-augment-imbalanced": "benchmarks.quality.scenarios.gan_augment_imbalanced",
    "gan-augment-manifold": "benchmarks.quality.scenarios.gan_augment_manifold",
    "few-label": "benchmarks.quality.scenarios.few_label",
    "few-label-mlm": "benchmarks.quality.scenarios.few_label_mlm",
    "cls-rl": "benchmarks.quality.scenarios.cls_rl",
    "soup": "benchmarks.quality.scenarios.soup",
    "soup-narrow": "benchmarks.quality.scenarios.soup_narrow",
    "soup-close": "benchmarks.quality.scenarios.soup_close",
    "soup-close-orders": "benchmarks.quality.scenarios.soup_close_orders",
    "conjugate": "benchmarks.quality.scenarios.conjugate",
    "conjugate-partial": "benchmarks.quality.scenarios.conjugate_partial",
    "samda-fewshot": "benchmarks.quality.scenarios.samda_fewshot",
    "samda-diagnosis": "benchmarks.quality.scenarios.samda_diagnosis",
    "tokenizer-diagnosis": "benchmarks.quality.scenarios.tokenizer_diagnosis",
}
NAMES = ["target", *MODULES]


def module(name: str):
    return importlib.import_module(MODULES[name])


def parse(value: str | None) -> list[str]:
    """``--scenario`` (comma-separated names, or ``all``) -> the scenario names, in the table's order."""
    if not value:
        return ["target"]
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if "all" in wanted:
        return list(NAMES)
    unknown = [w for w in wanted if w not in NAMES]
    if unknown:
        raise SystemExit(f"--scenario {','.join(unknown)}: no such scenario; scenarios are {', '.join(NAMES)}, all")
    return [n for n in NAMES if n in wanted]
