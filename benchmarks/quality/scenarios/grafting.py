"""Grafting: how much of a full fine-tune's target accuracy a ≤1% region of its changes carries.

Per seed: full fine-tuning of the cached pre-trained decoder on the target task (``t:`` four-digit
sums with written steps, 256 examples, 400 steps × 16, lr 3e-4 — the longer budget, where SFT is
far from 0) through ``compose(SFTTrainer, ["graft"])`` with ``graft_density=0.01`` (the base patch
is the top 1% of |θ_ft − θ_pre| over the plugin's region: every 2-D weight except the embeddings
and the output head), the reference's optimiser defaults (sigmoid bias 10, lr 1e7, 10 epochs) on
16 training batches; the plugin's ``graft_delta.safetensors`` is then applied to a fresh copy of
the pre-trained model (``ftplugins.sparse.delta.load_delta`` / ``apply_delta``): the grafted
model. ``graft-0.1pct`` runs ``ftplugins.methods.graft.graft`` directly on the same pair at density
1e-3, ``graft-1pct+emb`` at 1e-2 over a region that also holds the embeddings and the output head
(every 2-D weight), and ``graft-10pct`` at 1e-1 (outside the claim: how large a region it takes).
Density = the share of the region in the final mask (the optimisation can grow the base patch).
Scores: exact match on 200 held-out target prompts; ratio = grafted / fine-tuned accuracy of the same
seed (the claim: ≥ 0.9 at ≤ 1%). The embeddings and the output head stay pre-trained in
the grafted model except in ``graft-1pct+emb`` (the plugin's default region excludes them).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.evaluate import accuracy
from benchmarks.quality.scenarios._common import Context, final_loss, load, sft, summarize_rows

NAME = "grafting"
TITLE = "Grafting: a ≤1% region of the fine-tuning's changes vs the fine-tuned model"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
#: The plot's metrics: accuracy and the share of it recovered (density, 1e-3-1e-1, is off that scale; the table has it).
PLOT_METRICS = ("target", "ratio")

FULL = dict(train_examples=256, steps=400, batch=16, lr=3e-4, max_batches=16, epochs=10, eval_target=200,
            max_new_tokens=None)
SMOKE = dict(train_examples=16, steps=2, batch=8, lr=3e-4, max_batches=2, epochs=1, eval_target=4, max_new_tokens=4)


def pct_row(density: float) -> str:
    """The row of a graft at ``density``: 0.03 -> ``graft-3pct``."""
    return f"graft-{density * 100:g}pct"


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE if ctx.smoke else FULL, start=ctx.folder, start_note="the pre-trained decoder")


def run_with(ctx: Context, cfg: dict[str, Any], *, start: str, start_note: str,
             start_prompts: frozenset[str] = frozenset(), graft_lrs: tuple[float, ...] = (),
             optim: str = "adamw_torch", weight_decay: float = 0.0, frozen: tuple[str, ...] = (),
             more_densities: tuple[float, ...] = ()) -> dict[str, Any]:
    """The scenario fine-tuning and grafting onto the model in folder ``start`` (row ``pretrained``: θ_pre, the
    model before this fine-tuning; ``start_prompts``: prompts it was trained on, kept out of the test set).
    ``graft_lrs``: one more row per rate, the library's graft at density 1e-2 with that mask learning rate, the
    budget held (``hold_density``: a larger rate flips more entries on, and the claim is about ≤ 1%).
    ``optim`` / ``weight_decay``: the fine-tuning's optimizer; ``frozen``: parameter names that fine-tuning leaves
    as they are (the paper's protocol freezes the embeddings and the LM head); ``more_densities``: one more row
    per density, the library's graft at the reference's settings (as ``graft-10pct``)."""
    from ftplugins.methods.graft import graft
    from ftplugins.sparse.delta import apply_delta, load_delta

    train = {seed: tasks.examples(["chain_steps"], cfg["train_examples"], seed=1_000 + seed) for seed in ctx.seeds}
    target_test = tasks.held_out("chain_steps", cfg["eval_target"], seed=0,
                                 exclude=set(start_prompts) | {r["prompt"] for rows in train.values() for r in rows})

    def acc(model, tokenizer):
        return accuracy(model, tokenizer, target_test, tasks.TASKS["chain_steps"], max_new_tokens=cfg["max_new_tokens"])

    per_seed: dict[str, list[dict[str, Any]]] = {}
    pre, tokenizer = load(start)
    pre_acc = acc(pre, tokenizer)
    per_seed["pretrained"] = [{"target": pre_acc, "gain": 0.0}]

    def gain(g: float, ft: float) -> float:
        """The share of the fine-tuning's improvement over θ_pre that the graft recovers."""
        return (g - pre_acc) / (ft - pre_acc) if ft > pre_acc else math.nan

    for seed in ctx.seeds:
        data = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train[seed]]
        model, _ = load(start)
        for name in frozen:
            model.get_parameter(name).requires_grad_(False)
        with tempfile.TemporaryDirectory(prefix="ftplugins-graft-") as out_dir:
            trainer = sft(model, tokenizer, data, steps=cfg["steps"], lr=cfg["lr"], seed=seed, batch_size=cfg["batch"],
                          plugins=("graft",), keep_dir=out_dir, optim=optim, weight_decay=weight_decay,
                          options={"graft_density": 0.01, "graft_max_batches": cfg["max_batches"],
                                   "graft_epochs": cfg["epochs"]})
            delta = load_delta(os.path.join(out_dir, "graft_delta.safetensors"))
        result_1 = trainer.ftplugins_run.state["graft"]["result"]
        finetuned = trainer.model.eval()
        ft_acc = acc(finetuned, tokenizer)
        per_seed.setdefault("finetuned", []).append({"target": ft_acc, "ratio": 1.0, "gain": 1.0, "seed": seed,
                                                     "final_loss": final_loss(trainer),
                                                     "train_seconds": trainer.train_seconds})
        grafted, _ = load(start)
        apply_delta(grafted, delta)
        g_acc = acc(grafted, tokenizer)
        per_seed.setdefault("graft-1pct", []).append({
            "target": g_acc, "ratio": g_acc / ft_acc if ft_acc else math.nan, "gain": gain(g_acc, ft_acc),
            "seed": seed,
            "density": result_1.nnz / result_1.region_numel, "best_epoch": result_1.best_epoch,
            "mask_moved": float(result_1.mask_moved), "history": result_1.history})
        # density 1e-3 with the library function on the same (θ_pre, θ_ft) pair
        batches = []
        for batch in trainer.get_train_dataloader():
            batches.append(batch)
            if len(batches) >= cfg["max_batches"]:
                break
        finetuned_weights = {n: p.detach().clone() for n, p in finetuned.named_parameters()}

        def loss_fn(m, batch):  # the causal-LM loss on the completion tokens (TRL's compute_loss fuses its own
            # model's LM head, so it cannot score another model)
            keys = ("input_ids", "attention_mask", "position_ids", "labels")
            return m(**{k: v for k, v in batch.items() if k in keys}).loss

        extra = {}
        # (row, density, region, mask lr, hold the budget): the reference's lr and unheld mask, then graft_lrs held
        for name, density, region, lr, hold in (("graft-0.1pct", 1e-3, None, 1e7, False),
                                                ("graft-1pct+emb", 1e-2, "all", 1e7, False),
                                                ("graft-10pct", 1e-1, None, 1e7, False),
                                                *((pct_row(d), d, None, 1e7, False) for d in more_densities),
                                                *((f"graft-1pct-lr{lr:.0e}", 1e-2, None, lr, True)
                                                  for lr in graft_lrs)):
            base, _ = load(start)
            names = [n for n, p in base.named_parameters() if p.dim() == 2] if region == "all" else None
            result = graft(base, finetuned_weights, loss_fn, batches, region=names, density=density,
                           epochs=cfg["epochs"], seed=seed, keep_graft=True, lr=lr, hold_density=hold)
            g = acc(base, tokenizer)
            extra[name] = (g, result.nnz)
            per_seed.setdefault(name, []).append({
                "target": g, "ratio": g / ft_acc if ft_acc else math.nan, "gain": gain(g, ft_acc), "seed": seed,
                "density": result.nnz / result.region_numel, "best_epoch": result.best_epoch,
                "mask_moved": float(result.mask_moved), "history": result.history})
        ctx.log(f"  seed {seed} finetuned {ft_acc:.3f}  graft 1% {g_acc:.3f} ({result_1.nnz} entries, best epoch "
                f"{result_1.best_epoch})  "
                + "  ".join(f"{k} {v[0]:.3f} ({v[1]} entries)" for k, v in extra.items()) + "  "
                f"({trainer.train_seconds:.0f} s training)")
    notes = {"pretrained": start_note,
             "finetuned": f"full fine-tuning, {cfg['steps']} steps at lr {cfg['lr']:g} ({optim}"
                          + (f", weight decay {weight_decay:g}" if weight_decay else "")
                          + (", embeddings and LM head frozen" if frozen else "") + ") (θ_ft)",
             "graft-1pct": "θ_pre + the graft delta of compose(SFTTrainer, ['graft']), graft_density=0.01",
             "graft-0.1pct": "ftplugins.methods.graft.graft on the same pair, density 1e-3",
             "graft-1pct+emb": "graft on the same pair, density 1e-2, region incl. the embeddings and the output head",
             "graft-10pct": "graft on the same pair, density 1e-1 (how large a region recovers the accuracy)",
             **{pct_row(d): f"graft on the same pair, density {d:g}" for d in more_densities},
             **{f"graft-1pct-lr{lr:.0e}": f"graft on the same pair, density 1e-2 held (hold_density), mask "
                                          f"learning rate {lr:.0e} (the reference's is 1e7)" for lr in graft_lrs}}
    rows = summarize_rows(per_seed, ["target", "ratio", "gain", "density", "mask_moved"], notes)
    return {
        "rows": rows,
        "metrics": [["target", "target acc."], ["ratio", "grafted / fine-tuned acc."],
                    ["gain", "share of the improvement recovered"],
                    ["density", "share of region grafted"], ["mask_moved", "mask moved (share of seeds)"]],
        "config": cfg,
        "extra": {},
    }
