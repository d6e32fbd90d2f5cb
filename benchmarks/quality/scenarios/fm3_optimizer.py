"""FM3, diagnosed further: is it Adam's per-coordinate step on a generator that every task and site shares?

``fm3-diagnosis`` ruled out the sharing across tasks; initialisations that make every site's adapter start apart
(tried outside the harness) did not help either. What remains is the update: each coordinate of a generator's weight
mixes every task's and site's adapter (through their source vectors), and Adam scales each coordinate's step by its
own running gradient size, so a site whose gradient is small takes steps sized by the others'. This scenario holds
everything else fixed and moves only that: ``fm3-multitask``'s data, test and validation sets, sites, adapter width,
heads, schedule and 3 × 50 steps. Rows:

* ``hyper_adapter``: as in ``quality-small-fm3-multitask-lr`` (the ``hyperformer`` parametrization, the plugin's
  default then), at the rate its validation chose there (2e-3);
* ``one-hot``: each (task, site) gets its own one-hot source vector (width 36 = 3 tasks × 12 sites, the generators'
  input), in place of the projector's; the generators' biases stay at zero, the down-projection's columns start
  Kaiming-sized and the up-projection at zero (every adapter the identity at the start, as in ``hyper_adapter``).
  Each generator column is then one site's adapter of one task, and Adam scales each coordinate for that one;
* ``rotated``: the same one-hot sources times one fixed random orthogonal matrix: the same parameters and the same
  orthonormal sources, so under plain SGD it trains exactly as ``one-hot`` does; under Adam every coordinate mixes
  every site and task again.

``one-hot`` and ``rotated`` choose their rate on the validation split (6e-4 / 2e-3 / 6e-3, mean over the tasks; a
tie to the lower rate). Shown, not judged: if ``one-hot`` learns the sentiment tasks and ``rotated`` does not, the
optimizer's coordinates are the cause, not the generated parameterisation. The smoke run trains each row one step
on 8 sentences (one rate).
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import fm3_multitask as base
from benchmarks.quality.scenarios._common import Context, choose_rate, summarize_rows
from ftplugins.plugin import Plugin, hookimpl

NAME = "fm3-optimizer"
TITLE = "FM3 diagnosis: one-hot vs rotated source vectors (the same parameters; only Adam's coordinates differ)"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False  # the MiniLM encoder only
PLOT_METRICS = base.PLOT_METRICS
HYPER_LR = 2e-3  # fm3-multitask's validation choice for hyper_adapter
RATES = (6e-4, 2e-3, 6e-3)
SITES = 12  # 6 BERT layers × (attention output, FFN output)
ROTATION_SEED = 123


class FixedSources(Plugin):
    """Replaces the hypernetwork's projector output by fixed orthonormal source vectors, one per (task, site): the
    identity (``one-hot``) or one random rotation of it (``rotated``). Runs after ``hyper_adapter`` built it."""

    name = "fm3_fixed_sources"
    summary = "diagnosis only: fixed one-hot or rotated source vectors for hyper_adapter's generators"

    def __init__(self, rotate: bool):
        self.rotate = rotate

    @hookimpl
    def prepare_model(self, run, model):
        import math
        import types

        import torch
        from torch import nn

        net = model.hypernetwork
        tasks, count = net.task_embedding.num_embeddings, len(net.sites)
        sources = torch.eye(tasks * count)
        if self.rotate:
            gen = torch.Generator().manual_seed(ROTATION_SEED)
            sources = sources @ torch.linalg.qr(torch.randn(tasks * count, tasks * count, generator=gen))[0]
        net.register_buffer("fixed_sources", sources.view(tasks, count, -1), persistent=False)
        with torch.no_grad():
            for generator in net.generators.values():
                for name, head in generator.heads.items():
                    nn.init.zeros_(head.bias)
                    head.bias.requires_grad_(False)  # no shared offset: a site's tensors are its column only
                    if name == "down":  # D's columns Kaiming-sized (the uniform bound / sqrt(3) of a fresh Linear)
                        nn.init.normal_(head.weight, std=1 / math.sqrt(3 * generator.shapes["down"][1]))
                    else:  # d, U, u start at zero: the identity at the start
                        nn.init.zeros_(head.weight)
        for part in (net.task_embedding, net.layer_embedding, net.position_embedding, net.projector):
            part.requires_grad_(False)  # unused: the sources replace them

        net.source = types.MethodType(lambda self, task: self.fixed_sources[int(task)], net)
        return model


def run(ctx: Context) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from benchmarks.quality import lr_sweep
    from ftplugins.testing import minilm_path

    cfg = base.SMOKE if ctx.smoke else base.FULL
    rates = (HYPER_LR,) if ctx.smoke else RATES
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train_by_seed, scored = base.splits(cfg, ctx.seeds)
    width = len(base.TASKS) * SITES
    fixed = {**base.HYPERFORMER, "hyper_adapter_hidden_dim": width}
    rows = {"hyper_adapter": ((), base.HYPERFORMER, (HYPER_LR,)),
            "one-hot": ((FixedSources(rotate=False),), fixed, rates),
            "rotated": ((FixedSources(rotate=True),), fixed, rates)}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    params: dict[str, int] = {}
    for row, (extra, options, row_rates) in rows.items():
        for lr in row_rates:
            for seed in ctx.seeds:
                result, seconds, params[row] = base.run_hyper(train_by_seed[seed], scored, tokenizer, cfg, seed, lr,
                                                              extra_plugins=extra, hyper_options=options)
                result = base.swept_run(result, seed, seconds, params[row], lr)
                runs.setdefault(row, {}).setdefault(lr_sweep.lr_key(lr), []).append(result)
                ctx.log(f"  seed {seed} {row:<14} lr {lr_sweep.lr_key(lr)} mean {result['mean']:.3f} val "
                        f"{result['val_mean']:.3f}  ({params[row]:,} trainable, {seconds:.0f} s)")
    per_seed: dict[str, list[dict[str, Any]]] = {}
    swept: dict[str, Any] = {}
    for row, by_lr in runs.items():
        per_seed[row], swept[row] = choose_rate(by_lr, val="val_mean", test="mean", log=ctx.log, name=row)
    notes = {"hyper_adapter": f"fm3-multitask's hypernetwork, lr {HYPER_LR:g}; {params['hyper_adapter']:,} trainable",
             "one-hot": f"one-hot source per (task, site), lr {swept['one-hot']['chosen']} (chosen on validation); "
                        f"{params['one-hot']:,} trainable",
             "rotated": f"the one-hot sources rotated, lr {swept['rotated']['chosen']} (chosen on validation); "
                        f"{params['rotated']:,} trainable"}
    return {
        "rows": summarize_rows(per_seed, base.ROW_METRICS, notes),
        "metrics": base.METRIC_LABELS,
        "config": {**cfg, "tasks": base.TASKS, "hyper_lr": HYPER_LR,
                   "lr_sweep": {"one-hot": list(rates), "rotated": list(rates)},
                   "lr_rule": "best mean validation accuracy (mean over the tasks) over the seeds (tie: the lower lr)",
                   "rotation_seed": ROTATION_SEED},
        "extra": {"lr_sweep": swept},
    }
