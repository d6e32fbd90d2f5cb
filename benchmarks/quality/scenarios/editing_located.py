"""Editing, at the paper's protocol: the module LocFT-BF trains is located per model, on validation edits.

LocFT-BF's paper does not fix a depth: it locates the module per model (Qwen2.5-7B: ``layers.6.mlp.down_proj``;
Llama-3-8B: ``layers.22.mlp.down_proj``; Mistral-7B: all of layer 23). ``editing`` stands in the mid-depth
down-projection for that choice (at 750 updates: paraphrase success 0.911, 0.05 short of full fine-tuning's), and
``editing-layer`` tried the whole mid-depth layer by hand. Here the choice is made as a learning rate is chosen, on
held-out data: every layer's ``mlp.down_proj`` and every whole layer of the fact model are candidates (12 on
``mid``), each trains LocFT-BF on one validation set of edits (``editing``'s draw at seed 100, at most 750 updates,
lr 5e-4, minibatches of 8), and the candidate with the highest CounterFact score (the harmonic mean of edit
success, paraphrase success and neighbourhood preservation, as ROME's evaluation) is the located module; a tie goes
to the earlier candidate, and the list starts with ``editing``'s default (the mid-depth down-projection), then the
down-projections by depth, then the whole layers by depth. Then ``locft-located-750u`` (the located module) and
``full-750u`` train on each seed's edits exactly as in ``editing`` (same fact model, edits, scores and budget; the
validation edits are another draw of the same kind: some keys recur with other new values). Its own claim variant,
judged like ``editing``'s. The score is the plugin's (``ftplugins locft-locate`` runs this sweep for a user's model).
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import editing
from benchmarks.quality.scenarios._common import Context, load

NAME = "editing-located"
TITLE = "Model editing: LocFT-BF on the module located on validation edits vs full fine-tuning, 750 updates"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = editing.PLOT_METRICS
VALIDATION_SEED = 100


def candidates(layers: int) -> list[str]:
    """Down-projections and whole layers, the scenario's default (mid-depth down-projection) first."""
    downs = [editing.layer_module(i) for i in range(layers)]
    default = editing.layer_module(editing.mid_layer(layers))
    return [default, *(m for m in downs if m != default), *(f"model.layers.{i}" for i in range(layers))]


def locate(ctx: Context, cfg: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The located module and every candidate's validation scores."""
    from ftplugins.methods.locft import evaluate_edits
    from ftplugins.methods.locft.locate import counterfact_score

    folder, record = editing.fact_model(ctx, cfg)
    fact, tokenizer = load(folder)
    pool = candidates(fact.config.num_hidden_layers)
    rows, _ = editing.edit_rows(record, cfg, VALIDATION_SEED)
    table = []
    for modules in (pool[:2] if ctx.smoke else pool):
        trainer, _ = editing.edit(folder, tokenizer, rows, modules, cfg, steps=cfg["long_updates"],
                                  seed=VALIDATION_SEED)
        scores = evaluate_edits(trainer.model.eval(), tokenizer, rows, separator=editing.SEPARATOR)
        entry = {"modules": modules, **scores, "score": counterfact_score(scores),
                 "updates": trainer.state.global_step, "train_seconds": trainer.train_seconds}
        table.append(entry)
        ctx.log(f"  validation {modules:<28} score {entry['score']:.3f}  " + editing._line({**scores, "retention": 0})
                + f"  ({entry['updates']} updates, {entry['train_seconds']:.0f} s)")
    best = max(range(len(table)), key=lambda i: (table[i]["score"], -i))
    ctx.log(f"  located: {table[best]['modules']}")
    return table[best]["modules"], table


def run(ctx: Context) -> dict[str, Any]:
    cfg = editing.SMOKE if ctx.smoke else editing.FULL
    located, table = locate(ctx, cfg)

    def located_variants(layers: int, smoke: bool) -> tuple[dict[str, str | None], dict[str, str | None]]:
        rows = {"locft-located-750u": located, "full-750u": None}
        return rows, rows

    result = editing.run_with(ctx, cfg, located_variants)
    result["config"] = {**result["config"], "located": located, "validation_seed": VALIDATION_SEED,
                        "candidates": [entry["modules"] for entry in table]}
    result["extra"] = {**result["extra"], "validation": table}
    return result
