"""The performance harness's markdown table and bar plot, from its JSON result."""

from __future__ import annotations

import math
from typing import Any

from benchmarks import plotting
from benchmarks.common import fmt, markdown_table, pyplot

MB = 2**20


def markdown(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    out = [
        (f"# Performance: model `{config['model']}` ({config['model_params']:,} parameters, fp32, "
        f"vocab {config['vocab_size']}) on {machine['device_name']}\n"),
        (f"Command: `{machine['command']}`  \n"
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), torch threads {machine['torch_threads']}, "
        f"load average at start {_load(machine)}; torch {machine['versions'].get('torch')}, "
        f"transformers {machine['versions'].get('transformers')}, trl {machine['versions'].get('trl')}, "
        f"peft {machine['versions'].get('peft')}; commit {machine.get('git_commit')}.  \n"
        f"Loop: {config['loop']}  \n"
        f"{config['warmup']} warm-up + {config['steps']} timed steps per run, {config['repeats']} interleaved "
        f"repetitions; medians. Training memory: {result['memory_method']}.  \n"
        f"Setup: wall time from building the trainer to the start of the first step, on a dataset of batch × "
        f"{config['warmup'] + config['steps']} rows (dataset transforms, generation, reference passes, "
        f"optimizer construction); the same for every repetition, it is not part of the step time.\n"),
    ]
    for shape, block in result["results"].items():
        floor = "floor" in block["methods"]  # result files from before the floor row show no ratio to it
        rows = []
        for name, row in block["methods"].items():
            if row["status"] == "error":
                rows.append([f"`{name}`", "error: " + row["reason"][:100]] + [""] * (13 if floor else 11))
                continue
            rows.append([
                f"`{name}`",
                fmt(row["step_s"] * 1e3, ".1f"),
                fmt(row["step_vs_full"], ".2f"),
                fmt(row["step_vs_lora-r16"], ".2f"),
                *([fmt(row.get("step_vs_floor"), ".2f")] if floor else []),
                fmt(row.get("setup_s"), ".2f"),
                fmt(row["peak_train_bytes"] / MB if row["peak_train_bytes"] is not None else None, ".0f"),
                fmt(row["memory_vs_full"], ".2f"),
                fmt(row["memory_vs_lora-r16"], ".2f"),
                *([fmt(row.get("memory_vs_floor"), ".2f")] if floor else []),
                fmt(row["persistent_bytes"] / MB, ".1f"),
                f"{row['trainable_params']:,}",
                fmt(row["inference_vs_base"], ".2f"),
                "unmerged (cannot merge)" if row["merge"].startswith("no merge") else row["merge"],
                row["note"],
            ])
        out.append(f"\n## Batch {shape.replace('x', ' × ')} tokens\n\n")
        out.append(markdown_table(
            ["method", "step ms", "× full", "× LoRA16", *(["× floor"] if floor else []), "setup s", "train peak MB",
             "× full", "× LoRA16", *(["× floor"] if floor else []), "trainable+optim MB", "trainable params",
             "inference × base", "inference model", "what"],
            rows,
        ))
        out.append(f"\nBase model forward on the same batch: {block['base_inference_s'] * 1e3:.2f} ms.\n")
        if block.get("overhead"):
            o = block["overhead"]
            out.append(f"\nPlugin overhead: a no-op plugin / plain TRL SFTTrainer step time = "
                       f"{fmt(o['noop_plugin_vs_trl_step'], '.3f')}; ftplugins with no plugin (`full`) / plain TRL = "
                       f"{fmt(o['ftplugins_full_vs_trl_step'], '.3f')}.\n")
    if result.get("cli"):
        cli = result["cli"]
        out.append(f"\n`ftplugins list`: {cli['ftplugins_list_s'] * 1e3:.0f} ms wall, "
                   f"{cli['ftplugins_list_minus_startup_s'] * 1e3:.0f} ms above `python -c pass` "
                   f"({cli['python_pass_s'] * 1e3:.0f} ms); medians of {cli['runs']} runs.\n")
    if result.get("skipped"):
        out.append("\n## Skipped\n\n")
        out += [f"- `{name}`: {reason}\n" for name, reason in result["skipped"].items()]
    if result.get("peers"):
        out.append("\n## Peers\n\n" + peer_markdown(result["peers"]))
    return "".join(out)


def peer_markdown(peers: dict[str, Any]) -> str:
    if "error" in peers:
        return f"Peer run failed: {peers['error']}\n"
    rows = []
    for shape, block in peers["results"].items():
        for name, row in block["methods"].items():
            rows.append([shape, f"`{name}`", fmt(row.get("step_s", math.nan) * 1e3, ".1f"),
                         fmt(row.get("step_vs_lora-r16"), ".2f"), fmt(row.get("memory_vs_lora-r16"), ".2f"),
                         f"{row.get('trainable_params', 0):,}"])
    versions = peers.get("machine", {}).get("versions", {})
    head = (f"AdapterHub `adapters` {versions.get('adapters')} (transformers {versions.get('transformers')}, "
            f"peft {versions.get('peft')}) in its own environment; loop: {peers.get('config', {}).get('loop')}. "
            "Ratios are to PEFT LoRA r=16 measured in that environment, interleaved, same model and batch.\n\n")
    return head + markdown_table(["batch", "peer config", "step ms", "step × LoRA16", "train peak × LoRA16",
                                  "trainable params"], rows)


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average_1_5_15")
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


def plot(result: dict[str, Any], path: str) -> str | None:
    """Step time and training memory per method as ratios to LoRA r=16 and, when the run has the floor row, to the
    floor; one bar per batch shape. ``None`` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    shapes = list(result["results"])
    names = [n for n in next(iter(result["results"].values()))["methods"]
             if all(result["results"][s]["methods"].get(n, {}).get("status") != "error" for s in shapes)]
    references = [("lora-r16", "LoRA r=16")]
    if all("floor" in result["results"][s]["methods"] for s in shapes):
        references.append(("floor", "floor"))
    fig, axes = plt.subplots(len(references), 2, figsize=(max(8, 0.9 * len(names) + 4), 4.2 * len(references)),
                             squeeze=False)
    for (ref, label), row in zip(references, axes):
        for ax, metric, what in ((row[0], "step", "step time"), (row[1], "memory", "training peak memory")):
            groups = {shape: [result["results"][shape]["methods"].get(n, {}).get(f"{metric}_vs_{ref}")
                              for n in names] for shape in shapes}
            plotting.ratio_bars(ax, names, groups, f"{what} / {label}", label, legend="batch")
    device = result["machine"]["device_name"]
    fig.suptitle(f"{result['config']['model']} on {device}: each method as a multiple of LoRA r=16"
                 + (" and of the floor (frozen base, backward to the inputs only)" if len(references) > 1 else
                    " (this run has no floor row)"), fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)
