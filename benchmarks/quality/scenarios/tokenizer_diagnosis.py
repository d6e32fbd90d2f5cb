"""Why the first ``mid`` decoder could not copy or reverse a word: its BPE vocabulary, not its size (issue #20).

The run's decoder recipe (``--model``; the default ``small``: hidden 96, 3 layers, 1,200 steps × 32 on copy, reverse,
count, add, add_steps, one id per character) is pre-trained three ways, with everything else equal: ``as-built``
(the recipe itself), ``bpe-4096`` (the same model and data, a 4,096-token byte-level BPE trained on the texts, as the
first ``mid`` had), and ``mid-shape`` (``mid``'s shape and learning rate — hidden 256, 6 layers, 8 heads, MLP 768,
lr 1.5e-3 — on the recipe's characters and data). Each is scored on 100 held-out prompts per task (exact match of
greedy answers). Pre-training is deterministic (seed 0), so one build per row: the gaps this shows are between
0.0 and ~1.0, not within noise. Builds are cached like any decoder (``benchmarks/.cache/pretrained-<key>``).
Shown, not judged: no claim rests on these rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmarks.quality.scenarios._common import Context, summarize_rows

NAME = "tokenizer-diagnosis"
TITLE = "Tokenizer diagnosis: the recipe as built vs a 4,096-token BPE vs mid's shape, per pre-training task"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False  # it builds its own three
MID_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                 learning_rate=1.5e-3)
SMOKE_SHAPE = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)


def variants(recipe, smoke: bool) -> dict[str, Any]:
    """The three recipes: the run's own, with a BPE vocabulary, and in mid's shape (smoke: tiny sizes)."""
    return {"as-built": recipe,
            "bpe-4096": replace(recipe, tokenizer="bpe", vocab_size=512 if smoke else 4096),
            "mid-shape": replace(recipe, **(SMOKE_SHAPE if smoke else MID_SHAPE))}


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.quality.pretrain import pretrained

    per_seed: dict[str, list[dict[str, Any]]] = {}
    notes: dict[str, str] = {}
    task_names: list[str] = list(ctx.pretrain.tasks)
    for row, recipe in variants(ctx.pretrain, ctx.smoke).items():
        ctx.log(f"[tokenizer-diagnosis] {row}: building (or loading) the decoder ...")
        _, record = pretrained(recipe, log=ctx.log)
        accuracy = record["accuracy"]
        entry = {"seed": recipe.seed, **accuracy, "mean": sum(accuracy.values()) / len(accuracy)}
        per_seed[row] = [entry]
        notes[row] = (f"{record['parameters']:,} parameters, vocabulary {record.get('vocab_size', '?')}, "
                      f"{record.get('build_wall_seconds', record['seconds']):.0f} s build; key {record['key']}")
        ctx.log(f"[tokenizer-diagnosis] {row}: {entry}")
    metrics = [[name, name] for name in task_names] + [["mean", "mean over tasks"]]
    return {"rows": summarize_rows(per_seed, [m for m, _ in metrics], notes), "metrics": metrics,
            "config": {name: {k: v for k, v in recipe.recipe()["config"].items() if k != "tasks"}
                       for name, recipe in variants(ctx.pretrain, ctx.smoke).items()}, "extra": {}}
