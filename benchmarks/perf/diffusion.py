"""``python -m benchmarks.perf.diffusion``: the diffusion path's step time against what it stands for.

Rows measured interleaved (each repetition runs every row once, so machine load hits all of them), reported as the
median over repetitions of each run's median step time, from one optimizer step's end to the next (data, forward,
backward, clipping, optimizer, scheduler and, for the Trainer, its callbacks and bookkeeping). Two clocks: the
process's CPU time (what the ratios use: with ``--threads 1`` it counts the step's own work, whatever else the
machine runs) and wall time (shown beside it; on a shared machine it mostly measures the others' load):

* ``DiffusionTrainer`` (full fine-tuning of a small UNet) vs a minimal hand-written Accelerate loop doing the same
  (diffusers' ``train_text_to_image.py`` loop: cached latent moments sampled, ε-MSE at uniform timesteps, the
  Trainer's optimizer class and arguments, linear schedule, gradient clipping 1.0); the goal is at most 1.05×;
* PSO's step (pairs under one ε and t, the adapter-disabled reference) vs the plain diffusion step, both training the
  same SSF adapter;
* our adapters (ssf, block_lora, bottleneck) vs PEFT LoRA r=4 on the tiny UNet's attention projections, and every
  one of them vs the **floor**: the frozen tiny UNet back-propagating to its noisy-latent input only (the same data,
  text encoder and noise as the loop; no weight gradients, no optimizer) -- the least any adapter's step costs.

Training-phase peak memory (``common.PeakMemory``: RSS high-water mark above the resident set at the start) is
recorded for every row beside the step time.

Writes ``diffusion.json`` and ``diffusion.md`` to ``--out`` (default ``benchmarks/results/perf-diffusion-cpu``);
``--smoke``: the tiny UNet, two timed steps (CI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from benchmarks import common

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
#: The Trainer-vs-loop UNet: big enough that a step is tens of milliseconds on one CPU thread.
SMALL_UNET = {"block_out_channels": (32, 64), "attention_head_dim": 8, "norm_num_groups": 8}
ADAPTERS = {
    "ssf": {"ssf_target_modules": ATTENTION},
    "block_lora": {"block_lora_target_modules": ATTENTION, "block_lora_n": 2, "block_lora_r": 4},
    "bottleneck": {"bottleneck_target_modules": ATTENTION, "bottleneck_preset": "llm_adapters_parallel",
                   "bottleneck_size": 4},
}
PSO = {"pso_class_prompt": "a shape", "pso_num_references": 8}


class Setting:
    """One measured configuration: sizes shared by every row."""

    def __init__(self, smoke: bool, steps: int, warmup: int, batch: int, device: str):
        self.smoke, self.steps, self.warmup, self.batch, self.device = smoke, steps, warmup, batch, device
        self.small = {} if smoke else SMALL_UNET
        self.resolution = 16 if smoke else 32


def dataset_and_parts(setting: Setting):
    from ftplugins.diffusion import tiny

    return (tiny.shapes_dataset(64), tiny.tiny_text_encoder(), tiny.tiny_vae(), tiny.ddpm_scheduler(),
            tiny.tiny_tokenizer())


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer steps' ends (the first interval starts at the train begin)."""

        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(clocks())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(clocks())

    return StepTimer()


def clocks() -> tuple[float, float]:
    """(process CPU seconds, wall seconds)."""
    return time.process_time(), time.perf_counter()


def step_times(marks: list[tuple[float, float]], warmup: int) -> dict[str, float]:
    """Median CPU and wall seconds between consecutive marks, after ``warmup`` intervals."""
    cpu = [b[0] - a[0] for a, b in zip(marks, marks[1:])][warmup:]
    wall = [b[1] - a[1] for a, b in zip(marks, marks[1:])][warmup:]
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}


def training_args(setting: Setting, out: str, **extra: Any):
    from ftplugins.diffusion import DiffusionConfig

    return DiffusionConfig(output_dir=out, use_cpu=setting.device == "cpu", max_steps=setting.warmup + setting.steps,
                           per_device_train_batch_size=setting.batch, learning_rate=1e-4, report_to="none",
                           save_strategy="no", disable_tqdm=True, logging_steps=10**6, cache_latents=True,
                           resolution=setting.resolution, seed=0, **extra)


def trainer_run(setting: Setting, plugins: list, unet_overrides: dict, peft_config: Any = None, **options: Any):
    """Median step time of a DiffusionTrainer run (composed with ``plugins``) and its trainable parameter count."""
    import ftplugins
    from ftplugins.diffusion import DiffusionTrainer, tiny

    data, text_encoder, vae, scheduler, tokenizer = dataset_and_parts(setting)
    trainer_cls = ftplugins.compose(DiffusionTrainer, plugins, **options) if plugins else DiffusionTrainer
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_cls(model=tiny.tiny_unet(**unet_overrides), args=training_args(setting, out),
                              train_dataset=data, text_encoder=text_encoder, vae=vae, noise_scheduler=scheduler,
                              processing_class=tokenizer, peft_config=peft_config)
        timer = step_timer()
        trainer.add_callback(timer)
        memory = common.PeakMemory(setting.device)
        memory.reset()
        trainer.train()
        peak = memory.peak_above_base()
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {**step_times(timer.marks, setting.warmup), "peak_bytes": peak}, trainable


def hand_loop_run(setting: Setting, unet_overrides: dict, floor: bool = False):
    """The same full fine-tuning as :func:`trainer_run` written as diffusers' example scripts write it.

    ``floor``: the UNet frozen and the loss differentiated with respect to the noisy latents only (no weight
    gradients, no clipping, no optimizer step): the floor every adapter's step pays at least.
    """
    import torch
    from accelerate import Accelerator
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from transformers import Trainer, get_scheduler

    from ftplugins.diffusion import tiny
    from ftplugins.diffusion.collator import ImageCaptionCollator
    from ftplugins.diffusion.latents import cache_latents

    data, text_encoder, vae, noise_scheduler, tokenizer = dataset_and_parts(setting)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(setting, out)
    torch.manual_seed(0)
    unet = tiny.tiny_unet(**unet_overrides)
    if floor:
        unet.requires_grad_(False)
    accelerator = Accelerator(cpu=setting.device == "cpu")
    text_encoder.requires_grad_(False).eval().to(accelerator.device)
    vae.requires_grad_(False).eval().to(accelerator.device)
    collator = ImageCaptionCollator(tokenizer, setting.resolution)
    data = cache_latents(data, vae, collator)
    loader = torch.utils.data.DataLoader(data, batch_size=setting.batch, shuffle=True, collate_fn=collator)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    optimizer = optimizer_cls(unet.parameters(), **optimizer_kwargs)
    total = setting.warmup + setting.steps
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total)
    unet, optimizer, loader, schedule = accelerator.prepare(unet, optimizer, loader, schedule)
    unet.train()
    memory = common.PeakMemory(setting.device)
    memory.reset()
    marks, step = [clocks()], 0
    while step < total:
        for batch in loader:
            moments = batch["latent_moments"].to(accelerator.device)
            with torch.no_grad():
                latents = DiagonalGaussianDistribution(moments).sample() * vae.config.scaling_factor
                hidden = text_encoder(input_ids=batch["input_ids"].to(accelerator.device))[0]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      device=latents.device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps).requires_grad_(floor)
            prediction = unet(noisy, timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
            if floor:
                (grad,) = torch.autograd.grad(loss, noisy)
                del grad
            else:
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            marks.append(clocks())
            step += 1
            if step == total:
                break
    if floor:
        assert all(p.grad is None for p in unet.parameters()), "the floor must not produce weight gradients"
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {**step_times(marks, setting.warmup), "peak_bytes": memory.peak_above_base()}, trainable


def rows(setting: Setting) -> dict[str, Any]:
    """Row name -> a function returning ({"cpu": s, "wall": s} median per step, trainable parameters)."""
    from peft import LoraConfig

    from ftplugins.methods.pso import plugin as pso

    small = setting.small
    return {
        "overhead/DiffusionTrainer": lambda: trainer_run(setting, [], small),
        "overhead/hand-written accelerate loop": lambda: hand_loop_run(setting, small),
        "pso/plain step (ssf)": lambda: trainer_run(setting, ["ssf"], {}, **ADAPTERS["ssf"]),
        "pso/PSO step (ssf)": lambda: trainer_run(setting, [pso, "ssf"], {}, **ADAPTERS["ssf"], **PSO),
        "adapters/floor": lambda: hand_loop_run(setting, {}, floor=True),
        "adapters/full": lambda: trainer_run(setting, [], {}),
        "adapters/lora r=4": lambda: trainer_run(setting, [], {}, peft_config=LoraConfig(
            r=4, lora_alpha=4, target_modules=ATTENTION, init_lora_weights="gaussian")),
        **{f"adapters/{name}": (lambda name=name: trainer_run(setting, [name], {}, **ADAPTERS[name]))
           for name in ADAPTERS},
    }


def measure(setting: Setting, repeats: int) -> dict[str, Any]:
    runs = rows(setting)
    per_row: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    params: dict[str, int] = {}
    for repeat in range(repeats):
        for name, run in runs.items():
            seconds, trainable = run()
            per_row[name].append(seconds)
            params[name] = trainable
            print(f"  repeat {repeat + 1}/{repeats}  {name:<40} {seconds['cpu'] * 1e3:8.2f} ms CPU/step "
                  f"({seconds['wall'] * 1e3:.2f} ms wall)", flush=True)
    medians = {name: statistics.median(v["cpu"] for v in values) for name, values in per_row.items()}
    peaks = {name: _median_known(v.get("peak_bytes") for v in values) for name, values in per_row.items()}
    adapters = ("full", *ADAPTERS)
    return {"rows": {name: {"step_s": medians[name], "step_s_per_repeat": [v["cpu"] for v in per_row[name]],
                            "wall_step_s": statistics.median(v["wall"] for v in per_row[name]),
                            "peak_bytes": peaks[name], "trainable": params[name]}
                     for name in runs},
            "ratios": {
                "trainer_vs_hand_loop": common.ratio(medians["overhead/DiffusionTrainer"],
                                                     medians["overhead/hand-written accelerate loop"]),
                "pso_vs_plain": common.ratio(medians["pso/PSO step (ssf)"], medians["pso/plain step (ssf)"]),
                **{f"{name}_vs_lora": common.ratio(medians[f"adapters/{name}"], medians["adapters/lora r=4"])
                   for name in adapters},
                **{f"{name}_vs_floor": common.ratio(medians[f"adapters/{name}"], medians["adapters/floor"])
                   for name in ("lora r=4", *adapters)},
                **{f"memory_{name}_vs_lora": common.ratio(peaks[f"adapters/{name}"], peaks["adapters/lora r=4"])
                   for name in adapters},
                **{f"memory_{name}_vs_floor": common.ratio(peaks[f"adapters/{name}"], peaks["adapters/floor"])
                   for name in ("lora r=4", *adapters)},
            }}


def _median_known(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.diffusion", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny UNet everywhere, two timed steps (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/perf-diffusion-cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; smoke 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 3; smoke 1)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default 1: the CPU-time clock then "
                                                     "counts one step's work)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(argv)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    common.offline_environment()
    common.quiet_warnings()
    import torch

    torch.set_num_threads(args.threads or 1)  # CPU time measures a step's own work only on one thread
    setting = Setting(args.smoke, args.steps or (2 if args.smoke else 20), args.warmup or (1 if args.smoke else 3),
                      args.batch, "cpu")
    out = args.out or os.path.join(common.RESULTS_DIR, "perf-diffusion-cpu")
    started = time.perf_counter()
    result = {
        "harness": "perf.diffusion",
        "config": {"smoke": args.smoke, "steps": setting.steps, "warmup": setting.warmup, "batch": setting.batch,
                   "repeats": args.repeats or (1 if args.smoke else 3), "resolution_overhead_rows": setting.resolution,
                   "overhead_unet": dict(setting.small) or "tiny", "adapter_unet": "tiny (ftplugins.diffusion.tiny)"},
        "machine": common.machine_info("cpu", packages=("torch", "diffusers", "accelerate", "peft"), dirty=dirty),
    }
    result.update(measure(setting, result["config"]["repeats"]))
    result["elapsed_s"] = time.perf_counter() - started
    from benchmarks.perf.diffusion_report import markdown, plot

    published = common.publish(out, "diffusion", result, markdown(result))
    plot(result, os.path.join(out, "diffusion.png"))
    return published


if __name__ == "__main__":
    main()
