"""The quality harness's markdown and plot, from its JSON result."""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

from benchmarks.common import fmt, markdown_table, pyplot
from benchmarks.quality import scenarios


def _pm(row: dict[str, Any], metric: str) -> str:
    return f"{fmt(row[f'{metric}_mean'], '.3f')} ± {fmt(row[f'{metric}_std'], '.3f')}"


def _build_line(pretrained: dict[str, Any]) -> str:
    """How the decoder was built and its held-out curve, where the run recorded them (runs since issue #20)."""
    if "build_wall_seconds" not in pretrained:
        return ""
    line = (f"Decoder build: {pretrained['build_wall_seconds'] / 60:.1f} min wall on {pretrained.get('device', '?')} "
            f"({pretrained.get('torch_threads', '?')} torch threads), vocabulary {pretrained.get('vocab_size', '?')}")
    curve = pretrained.get("heldout_curve") or []
    if curve:
        line += "; held-out loss / mean accuracy by step: " + ", ".join(
            f"{p['step']}: {p['eval_loss']:.3f} / {p['accuracy_mean']:.3f}" for p in curve)
    return line + ".  \n"


def markdown(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    pre, ft = config["pretrain"], config["finetune"]
    out = [
        "# Quality: toy-scale checks of the papers' claims\n\n",
        f"Command: `{machine['command']}`  \n",
        (f"Machine: {machine['device_name']}, {machine['cpu_count']} CPUs, torch threads {machine['torch_threads']}; "
        f"torch {machine['versions'].get('torch')}, transformers {machine['versions'].get('transformers')}, "
        f"trl {machine['versions'].get('trl')}, peft {machine['versions'].get('peft')}; "
        f"commit {machine.get('git_commit')}"
        + (f"; claims judged again at commit {result['claims_judged_at']['git_commit']} (--rejudge)"
           if result.get("claims_judged_at") else "") + ".  \n"),
        (f"Pre-trained decoder: Llama {pre['hidden_size']}×{pre['num_hidden_layers']} layers "
         f"({result['pretrained']['parameters']:,} parameters), {pre['steps']} steps × {pre['batch_size']} on "
         f"{', '.join(pre['tasks'])}; cache key {result['pretrained']['key']}; accuracy after pre-training: "
         + ", ".join(f"{k} {v:.2f}" for k, v in result["pretrained"]["accuracy"].items()) + ".  \n"
         + _build_line(result["pretrained"]))
        if result.get("pretrained") else "No shared pre-trained decoder: the scenarios run build their own models "
        "or need none.  \n",
        (f"Fine-tuning: target `{ft['target']}`, {ft['train_examples']} training examples, {ft['steps']} steps × "
        f"batch {ft['batch_size']} for every method (cosine schedule, per-row learning rate), seeds "
        f"{config['seeds']}; scored on {ft['eval_target']} held-out target prompts and {ft['eval_retention']} "
        "held-out prompts of each pre-training task (exact match of greedy answers).\n\n"),
    ]
    if "target" not in result.get("scenarios_run", ["target"]):
        out[-1] = f"Scenarios run: {', '.join(result['scenarios_run'])} (not the `target` method table); seeds " \
                  f"{config['seeds']}.\n\n"
    else:
        rows = []
        for name, row in result["summary"].items():
            rows.append([f"`{name}`", _pm(row, "target"), _pm(row, "retention"), _pm(row, "forgetting"),
                         fmt(row.get("learning_rate"), ".0e"), f"{row.get('trainable_params', 0):,}",
                         row.get("note", "")])
        out.append(markdown_table(["method", "target acc.", "retention", "forgetting", "lr", "trainable params",
                                   "what"], rows))
        out.append("\n`pretrained` is the model before fine-tuning (its retention is the reference; forgetting = "
                   "its retention − the row's).\n\n")
        out += sweep_section(result)
    out += scenario_sections(result)
    out.append("## Claims\n\n")
    out.append(markdown_table(["claim", "verdict", "numbers / reason", "paper"],
                              [[v["text"], f"**{v['verdict']}**", v["detail"], v["paper"]] for v in result["claims"]]))
    if result.get("skipped"):
        out.append("\n## Skipped rows\n\n")
        out += [f"- `{name}`: {reason}\n" for name, reason in result["skipped"].items()]
    return "".join(out)


def build_markdown(result: dict[str, Any], header: bool = True) -> str:
    """``--build-model SIZE --out DIR``: one decoder build as a result; without the header (title, command, machine),
    the body of BENCHMARKS.md's section for a ``build.json`` folder, whose provenance line says those."""
    machine, pre = result["machine"], result["pretrained"]
    config = pre["config"]
    order = [t for t in config["tasks"] if t in pre["accuracy"]]  # the recipe's order (JSON sorts the keys)
    where = ("built by this command" if result.get("built_now") else
             "found in the cache: built earlier, with the same recipe key; the times are that build's")
    out = [
        f"# Pre-trained decoder `{result['size']}`{' (smoke recipe)' if result.get('smoke') else ''}\n\n",
        f"Command: `{machine['command']}`  \n",
        f"Machine: {machine['device_name']}, {machine['cpu_count']} CPUs, torch {machine['versions'].get('torch')}, "
        f"transformers {machine['versions'].get('transformers')}, trl {machine['versions'].get('trl')}; commit "
        f"{machine.get('git_commit')}.  \n",
    ] if header else []
    out += [
        f"Decoder: Llama {config['hidden_size']}×{config['num_hidden_layers']} layers, {pre['parameters']:,} "
        f"parameters ({pre.get('non_embedding_parameters', 0):,} outside the embeddings), vocabulary "
        f"{pre.get('vocab_size', '?')}; {config['steps']:,} steps × {config['batch_size']} on {config['examples']:,} "
        f"examples of {len(config['tasks'])} tasks; cache key {pre['key']} ({where}).\n\n",
        markdown_table(["trained on", "training", "whole build (corpus, training, scoring)", "torch threads"],
                       [[pre.get("device", "?"), f"{pre['seconds']:.0f} s",
                         f"{pre.get('build_wall_seconds', pre['seconds']):.0f} s "
                         f"({pre.get('build_wall_seconds', pre['seconds']) / 60:.1f} min)",
                         pre.get("torch_threads", "?")]]),
        "\nHeld-out accuracy after pre-training (greedy exact match, prompts not in the training rows):\n\n",
        markdown_table(order, [[f"{pre['accuracy'][t]:.2f}" for t in order]]),
    ]
    curve = pre.get("heldout_curve") or []
    if curve:
        out.append("\nHeld-out curve during training:\n\n")
        out.append(markdown_table(["step", "eval loss", "mean accuracy"],
                                  [[p["step"], f"{p['eval_loss']:.3f}", f"{p['accuracy_mean']:.3f}"] for p in curve]))
    return "".join(out)


def sweep_section(result: dict[str, Any]) -> list[str]:
    """The ``--lr-sweep`` table: validation and test numbers per row and candidate learning rate."""
    sweep = result.get("lr_sweep")
    if not sweep:
        return []
    out = [(f"## Learning-rate sweep\n\nEach row's learning rate: {sweep['rule']}; validation: "
            f"{sweep['val_examples']} held-out target prompts disjoint from the training and test prompts. The "
            "table above shows the chosen lr's test numbers, and the claims are judged on them. **bold** = chosen.\n\n")]
    rows = []
    for name, row in sweep["rows"].items():
        for key, entry in row["per_lr"].items():
            mark = "**" if key == row["chosen"] else ""
            rows.append([f"`{name}`", f"{mark}{key}{mark}", _pm(entry, "val_target"), _pm(entry, "target"),
                         _pm(entry, "retention"), _pm(entry, "forgetting"),
                         "default" if entry["learning_rate"] == row["default_lr"] else ""])
    out.append(markdown_table(["row", "lr", "val target acc.", "test target acc.", "retention", "forgetting",
                               "row's default lr"], rows))
    out.append("\n")
    return out


def scenario_sweep_table(scenario: dict[str, Any]) -> list[str]:
    """A scenario that chose its rows' learning rates on a validation split (``extra["lr_sweep"]``): validation and
    test accuracy per row and candidate rate, the chosen one in bold; nothing for a scenario that did not."""
    sweep = (scenario.get("extra") or {}).get("lr_sweep")
    if not sweep:
        return []
    rows = [[f"`{name}`", *(["**" + key + "**"] if key == row["chosen"] else [key]), _pm(entry, "val_accuracy"),
             _pm(entry, "accuracy")] for name, row in sweep.items() for key, entry in row["per_lr"].items()]
    config = scenario.get("config", {})
    rule = config.get("lr_rule", "best mean validation accuracy")
    return [f"\nEach swept row's learning rate: {rule}; its numbers above are the chosen (**bold**) rate's.\n\n",
            markdown_table(["row", "lr", "validation acc.", config.get("lr_test_label", "test acc.")], rows)]


def scenario_sections(result: dict[str, Any]) -> list[str]:
    """One section per scenario run besides ``target``: its design and a row × metric table (mean ± std)."""
    out = []
    for name, scenario in (result.get("scenarios") or {}).items():
        metrics = scenario["metrics"]
        out.append(f"## Scenario `{name}`: {scenario['title']}\n\n{scenario['design']}\n\n")
        rows = []
        for row_name, row in scenario["rows"].items():
            cells = [_pm(row, key) if f"{key}_mean" in row else "–" for key, _ in metrics]
            rows.append([f"`{row_name}`", *cells, str(len(row.get("per_seed", []))), row.get("note", "")])
        out.append(markdown_table(["row", *[label for _, label in metrics], "seeds", "what"], rows))
        out += scenario_sweep_table(scenario)
        out.append(f"\n({scenario.get('elapsed_s', float('nan')):.0f} s)\n\n")
    return out


#: The one-figure-for-all-scenarios file older runs wrote; ``plots`` replaces it by one figure per scenario.
LEGACY_SCENARIOS_PNG = "quality-scenarios.png"


def scenario_png(name: str) -> str:
    """The file name of scenario ``name``'s figure."""
    return f"scenario-{name}.png"


def plots(result: dict[str, Any], out: str) -> list[str]:
    """Write every figure of ``result`` to ``out``; returns the file names written (none without matplotlib).

    ``quality.png``: the ``target`` method table (when it ran); ``scenario-NAME.png``: one per other scenario (so
    BENCHMARKS.md shows one plot per scenario). A legacy ``quality-scenarios.png`` in ``out`` is removed.
    """
    written = []
    if "target" in result.get("scenarios_run", ["target"]) and plot(result, os.path.join(out, "quality.png")):
        written.append("quality.png")
    for name, scenario in (result.get("scenarios") or {}).items():
        if plot_scenario(result, name, scenario, os.path.join(out, scenario_png(name))):
            written.append(scenario_png(name))
    legacy = os.path.join(out, LEGACY_SCENARIOS_PNG)
    if written and os.path.isfile(legacy):
        os.remove(legacy)
    return written


def plot(result: dict[str, Any], path: str) -> str | None:
    """The ``target`` method table: target accuracy and retention per row."""
    plt = pyplot()
    if plt is None:
        return None
    names = list(result["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.0 * len(names) + 4), 4.2))
    for ax, metric, title in ((axes[0], "target", f"target accuracy ({result['config']['finetune']['target']})"),
                              (axes[1], "retention", "retention (mean pre-training task accuracy)")):
        means = [result["summary"][n][f"{metric}_mean"] for n in names]
        stds = [result["summary"][n][f"{metric}_std"] for n in names]
        ax.bar(range(len(names)), [m if math.isfinite(m) else 0 for m in means],
               yerr=[s if math.isfinite(s) else 0 for s in stds], capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"mean ± std over seeds {result['config']['seeds']}", fontsize=10)
    fig.tight_layout()
    from benchmarks import plotting

    return plotting.save(fig, path)


def _plot_metrics(name: str, scenario: dict[str, Any]) -> list[list[str]]:
    """The scenario's metrics that share its panel's 0-1 scale (a module's ``PLOT_METRICS``; default all)."""
    keep = getattr(scenarios.module(name), "PLOT_METRICS", None) if name in scenarios.MODULES else None
    return [m for m in scenario["metrics"] if keep is None or m[0] in keep]


def plot_scenario(result: dict[str, Any], name: str, scenario: dict[str, Any], path: str) -> str | None:
    """Scenario ``name``: each row's metrics as grouped bars, mean ± std over seeds, each bar labelled.

    The same rows and metrics as the scenario's markdown table; a row without a metric has no bar there.
    """
    from benchmarks import plotting

    plt = pyplot()
    if plt is None:
        return None
    seeds = result["config"]["seeds"]
    metrics = _plot_metrics(name, scenario)
    rows = list(scenario["rows"].items())
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * len(rows) * max(1, len(metrics)) + 4), 4.2),
                           layout="constrained")
    width, top = 0.8 / max(1, len(metrics)), 1.0
    for i, (key, label) in enumerate(metrics):
        xs, means, stds = [], [], []
        for x, (_, row) in enumerate(rows):
            mean, std = row.get(f"{key}_mean", math.nan), row.get(f"{key}_std", math.nan)
            if math.isfinite(mean):
                xs.append(x + (i - (len(metrics) - 1) / 2) * width)
                means.append(mean)
                stds.append(std if math.isfinite(std) else 0.0)
                top = max(top, mean + stds[-1])
        ax.bar(xs, means, width=width, yerr=stds, capsize=2, color=f"C{i}", label=label)
        for x, mean, std in zip(xs, means, stds):  # the value, so that 0 reads apart from "not measured"
            ax.annotate(f"{mean:.2f}", (x, mean + std), xytext=(0, 2), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row_name if len(row.get("per_seed", [])) in (0, len(seeds))
                        else f"{row_name} (n={len(row['per_seed'])})" for row_name, row in rows],
                       rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel("score (see legend)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    title = textwrap.wrap(f"{scenario['title']} (--scenario {name}); mean ± std over seeds {seeds}", 100,
                          break_on_hyphens=False)
    ax.set_title("\n".join(title), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return plotting.save(fig, path)
