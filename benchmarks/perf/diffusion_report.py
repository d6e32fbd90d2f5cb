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
    lines.append("\n**Adapters vs PEFT LoRA r=4** on the tiny UNet's attention projections (to_q, to_k, to_v, "
                 "to_out.0):\n")
    table = []
    for name in ("lora r=4", "ssf", "block_lora", "bottleneck", "full"):
        row = rows[f"adapters/{name}"]
        ratio = "1×" if name == "lora r=4" else common.fmt(ratios[f"{name}_vs_lora"], ".2f") + "×"
        table.append([name, _ms(row["step_s"]), spread[f"adapters/{name}"], _ms(row.get("wall_step_s")), ratio,
                      f"{row['trainable']:,}"])
    lines.append(common.markdown_table(
        ["row", "CPU ms / step", "range", "wall ms / step", "vs LoRA", "trainable parameters"], table))
    return "\n".join(lines) + "\n"
