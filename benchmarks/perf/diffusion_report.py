"""The diffusion perf harness's markdown tables, from its JSON result (no torch import: the report tool reads it)."""

from __future__ import annotations

from benchmarks import common


def _ms(seconds: float | None) -> str:
    return common.fmt(None if seconds is None else seconds * 1e3)


def markdown(result: dict) -> str:
    rows, ratios, config = result["rows"], result["ratios"], result["config"]
    spread = {name: f"{_ms(min(r['step_s_per_repeat']))}–{_ms(max(r['step_s_per_repeat']))}" for name, r in rows.items()}
    lines = [f"Median step time (process CPU time, one torch thread) over {config['repeats']} interleaved repetitions "
             f"of {config['steps']} timed steps (after {config['warmup']} untimed), batch {config['batch']}; range = "
             "the repetitions' medians; wall = median wall time, which on a shared machine includes the others' "
             "load.\n"]
    trainer, loop = rows["overhead/DiffusionTrainer"], rows["overhead/hand-written accelerate loop"]
    unet = config["overhead_unet"]
    unet = ", ".join(f"{k}={v}" for k, v in unet.items()) if isinstance(unet, dict) else unet
    lines.append(f"**Trainer path overhead** (full fine-tuning, UNet {unet}, "
                 f"{config['resolution_overhead_rows']} px images, {trainer['trainable']:,} parameters; goal ≤ 1.05×):\n")
    lines.append(common.markdown_table(
        ["row", "CPU ms / step", "range", "wall ms / step", "ratio"],
        [["DiffusionTrainer", _ms(trainer["step_s"]), spread["overhead/DiffusionTrainer"],
          _ms(trainer.get("wall_step_s")), common.fmt(ratios["trainer_vs_hand_loop"], ".3f") + "×"],
         ["hand-written Accelerate loop", _ms(loop["step_s"]), spread["overhead/hand-written accelerate loop"],
          _ms(loop.get("wall_step_s")), "1×"]]))
    plain, pso = rows["pso/plain step (ssf)"], rows["pso/PSO step (ssf)"]
    lines.append("\n**PSO step vs the plain diffusion step** (tiny UNet, both training the same SSF adapter):\n")
    lines.append(common.markdown_table(
        ["row", "CPU ms / step", "range", "wall ms / step", "ratio"],
        [["plain denoising loss", _ms(plain["step_s"]), spread["pso/plain step (ssf)"], _ms(plain.get("wall_step_s")),
          "1×"],
         ["PSO (pairs + adapter-disabled reference)", _ms(pso["step_s"]), spread["pso/PSO step (ssf)"],
          _ms(pso.get("wall_step_s")), common.fmt(ratios["pso_vs_plain"], ".2f") + "×"]]))
    floor = "adapters/floor" in rows  # result files from before the floor row show no ratio to it
    memory = any(r.get("peak_bytes") is not None for r in rows.values())
    lines.append("\n**Adapters vs PEFT LoRA r=4** on the tiny UNet's attention projections (to_q, to_k, to_v, "
                 "to_out.0)" + (", and vs the floor (the frozen UNet back-propagating to its noisy-latent input "
                                "only)" if floor else "") + ":\n")
    table = []
    for name in (*(["floor"] if floor else []), "lora r=4", "ssf", "block_lora", "bottleneck", "full"):
        row = rows[f"adapters/{name}"]
        ratio = "1×" if name == "lora r=4" else "–" if name == "floor" else _x(ratios[f"{name}_vs_lora"])
        cells = [name, _ms(row["step_s"]), spread[f"adapters/{name}"], _ms(row.get("wall_step_s")), ratio]
        if floor:
            cells.append("1×" if name == "floor" else _x(ratios.get(f"{name}_vs_floor")))
        if memory:
            cells.append(common.fmt(None if row.get("peak_bytes") is None else row["peak_bytes"] / 2**20, ".0f"))
            if floor:
                cells.append("1×" if name == "floor" else _x(ratios.get(f"memory_{name}_vs_floor")))
        table.append([*cells, f"{row['trainable']:,}"])
    lines.append(common.markdown_table(
        ["row", "CPU ms / step", "range", "wall ms / step", "vs LoRA", *(["vs floor"] if floor else []),
         *(["train peak MB"] if memory else []), *(["memory vs floor"] if floor and memory else []),
         "trainable parameters"], table))
    return "\n".join(lines) + "\n"


def _x(value: float | None) -> str:
    return common.fmt(value, ".2f") + "×"


def plot(result: dict, path: str) -> str | None:
    """The adapter rows' step time (and training memory, when recorded) as multiples of PEFT LoRA r=4 and, when
    the run has it, of the floor; ``None`` without matplotlib."""
    from benchmarks import plotting

    plt = common.pyplot()
    if plt is None:
        return None
    rows, ratios = result["rows"], result["ratios"]
    names = ["lora r=4", "ssf", "block_lora", "bottleneck", "full"]
    references = [("lora", "LoRA r=4")] + ([("floor", "floor")] if "adapters/floor" in rows else [])
    memory = all(rows[f"adapters/{n}"].get("peak_bytes") is not None for n in names)
    metrics = [("", "step time (CPU)")] + ([("memory_", "training peak memory")] if memory else [])
    fig, axes = plt.subplots(len(references), len(metrics), squeeze=False,
                             figsize=(4.5 * len(metrics) + 1, 3.6 * len(references)))
    for (ref, label), row in zip(references, axes):
        for ax, (prefix, what) in zip(row, metrics):
            values = [1.0 if n == "lora r=4" and ref == "lora" else ratios.get(f"{prefix}{n}_vs_{ref}")
                      for n in names]
            plotting.ratio_bars(ax, names, {f"batch {result['config']['batch']}": values}, f"{what} / {label}",
                                label)
    fig.suptitle("Diffusion adapters on the tiny UNet (CPU, one thread)", fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)
