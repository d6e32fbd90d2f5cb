"""PSO: tuning a few-step (distilled) text-to-image model to a new style without losing its few-step sampling.

Built once and cached (:mod:`._diffusion_toy`: coloured shapes, a deterministic latent space, the tiny UNet):
a *teacher* trained with the ε-loss on shapes of 4 colours on a black background ("a red disc", ...), then a
*distilled* student (initialised from the teacher) trained to map every state of the teacher's deterministic
20-step DDIM trajectories at the 4 trailing timesteps 999/749/499/249 onto the trajectory's end point — a short
trajectory distillation, so that 4 Euler steps (the sampler PSO pairs with) give what 20 DDIM steps of the teacher
give. Per seed, the distilled model is fully fine-tuned on 16 red discs in the new style (a grey background,
caption "a red disc") through ``compose(DiffusionTrainer, ...)`` with the plain denoising loss (uniform t) or with
``pso`` (offline, Diffusion-DPO form, frozen-copy reference, 16 references sampled with "a red disc", λ 0.1, β 5),
same steps, batch and learning rate (constant). Metrics, defined before any run: 64 samples of "a red disc" (4
Euler steps, guidance 0, the same noise for every row of a seed) are compared with a clean reference set of red
discs (128 on black, 128 on grey, not trained on): ``distance`` = mean distance of a sample to its nearest clean
latent (per dimension; lower = closer to clean shapes; the ``clean`` row is held-out clean images, the floor),
``style`` = share of samples whose nearest clean latent is a grey one (the new style); ``background`` (added after a
first run, discarded for a sampler bug, showed ``style`` leaning grey for blurry samples) = where a sample's
per-channel mean lies from the black (0) to the grey (1) clean discs' mean. The claim: PSO keeps
few-step quality (distance) better than the plain loss while both move toward the style (style above the
distilled model's).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality.scenarios._common import Context, cached_build, summarize_rows

NAME = "pso-style"
TITLE = "PSO: a few-step model tuned to a new style, few-step quality kept vs the plain loss"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("distance", "style")
PROMPT = "a red disc"

FULL = dict(base_images=1024, base_steps=500, base_batch=32, base_lr=1e-3, distill_pairs=256, teacher_steps=20,
            distill_steps=300, distill_lr=3e-4, targets=16, ft_steps=80, ft_batch=4, ft_lr=2e-4, references=16,
            samples=64, clean=128)
SMOKE = dict(base_images=16, base_steps=2, base_batch=4, base_lr=1e-3, distill_pairs=4, teacher_steps=20,
             distill_steps=2, distill_lr=3e-4, targets=4, ft_steps=2, ft_batch=2, ft_lr=2e-4, references=2,
             samples=4, clean=4)
DISTILLED_T = [999, 749, 499, 249]


def build_models(cfg: dict[str, Any], ctx: Context):
    """Build (or reuse) the teacher and the distilled student; returns their folder."""

    def build(folder: str) -> dict[str, Any]:
        import torch

        from benchmarks.quality.scenarios import _diffusion_toy as toy
        from ftplugins.diffusion import tiny

        vae, text, scheduler = world()
        rows = toy.shape_images(cfg["base_images"], seed=1)
        latents = toy.encode(vae, [r[0] for r in rows])
        captions = [f"a {colour} {shape}" for _, shape, colour, _ in rows]
        ctx.log(f"  teacher: {cfg['base_steps']} steps × {cfg['base_batch']} on {len(rows)} shapes")
        teacher = toy.train_denoiser(tiny.tiny_unet(seed=0), latents, captions, text, scheduler, cfg["base_steps"],
                                     cfg["base_batch"], cfg["base_lr"], seed=0, log=ctx.log)
        teacher.save_pretrained(os.path.join(folder, "teacher"))
        pair_captions = [captions[i % len(captions)] for i in range(cfg["distill_pairs"])]
        states, ends = toy.ddim_trajectories(teacher, pair_captions, text, scheduler, cfg["teacher_steps"],
                                             DISTILLED_T, seed=2)
        n = len(pair_captions)
        flat_states = states.reshape(-1, *states.shape[2:])
        flat_t = torch.tensor(DISTILLED_T).repeat_interleave(n)
        ctx.log(f"  distilled: {cfg['distill_steps']} steps × {cfg['base_batch']} on {n} teacher trajectories")
        student = tiny.tiny_unet(seed=0)
        student.load_state_dict(teacher.state_dict())
        toy.train_denoiser(student, flat_states, pair_captions * len(DISTILLED_T), text, scheduler,
                           cfg["distill_steps"], cfg["base_batch"], cfg["distill_lr"], seed=3, log=ctx.log,
                           targets=ends.repeat(len(DISTILLED_T), 1, 1, 1), timesteps=flat_t)
        student.save_pretrained(os.path.join(folder, "distilled"))
        return {}

    recipe = {"version": 2, **{k: cfg[k] for k in ("base_images", "base_steps", "base_batch", "base_lr",
                                                     "distill_pairs", "teacher_steps", "distill_steps", "distill_lr")}}
    folder, _ = cached_build(ctx, "pso-toy", recipe, build)
    return folder


def world():
    """The deterministic VAE (calibrated on black and grey shapes), the text encoder cache and the noise schedule."""
    from benchmarks.quality.scenarios import _diffusion_toy as toy
    from ftplugins.diffusion import tiny

    calibration = toy.shape_images(256, seed=99, backgrounds=("black", "grey"))
    vae = toy.deterministic_vae([r[0] for r in calibration])
    return vae, toy.TextCache(tiny.tiny_text_encoder(seed=0).eval(), tiny.tiny_tokenizer()), toy.noise_scheduler()


def fine_tune(student_dir: str, targets: Any, plugins: list, options: dict[str, Any], cfg: dict[str, Any], seed: int):
    from diffusers import UNet2DConditionModel
    from transformers.trainer_callback import PrinterCallback

    import ftplugins
    from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny

    vae, _, scheduler = world()
    unet = UNet2DConditionModel.from_pretrained(student_dir)
    with tempfile.TemporaryDirectory(prefix="ftplugins-pso-style-") as out:
        args = DiffusionConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                               max_steps=cfg["ft_steps"], per_device_train_batch_size=cfg["ft_batch"],
                               learning_rate=cfg["ft_lr"], lr_scheduler_type="constant", weight_decay=0.0,
                               logging_steps=max(1, cfg["ft_steps"] // 4), disable_tqdm=True, seed=seed,
                               data_seed=seed, dataloader_num_workers=0)
        trainer = ftplugins.compose(DiffusionTrainer, plugins, **options)(
            model=unet, args=args, train_dataset=targets, text_encoder=tiny.tiny_text_encoder(seed=0), vae=vae,
            noise_scheduler=scheduler, processing_class=tiny.tiny_tokenizer())
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainer.model.eval()


def run(ctx: Context) -> dict[str, Any]:
    import torch
    from datasets import Dataset, Features, Image, Value
    from diffusers import UNet2DConditionModel

    from benchmarks.quality.scenarios import _diffusion_toy as toy
    from ftplugins.methods.pso import plugin as pso

    cfg = SMOKE if ctx.smoke else FULL
    folder = build_models(cfg, ctx)
    vae, text, scheduler = world()
    clean = toy.shape_images(2 * cfg["clean"], seed=5000, shapes=("disc",), colours=("red",),
                             backgrounds=("black", "grey"))
    reference = toy.encode(vae, [r[0] for r in clean])
    is_grey = [r[3] == "grey" for r in clean]

    grey = torch.tensor(is_grey)

    def measure(latents) -> dict[str, float]:
        distance, index = toy.nearest(latents, reference)
        return {"distance": float(distance.mean()), "style": sum(is_grey[i] for i in index.tolist()) / len(index),
                "background": float(toy.background_shift(latents, reference[~grey], reference[grey]).mean())}

    teacher = UNet2DConditionModel.from_pretrained(os.path.join(folder, "teacher"))
    student_dir = os.path.join(folder, "distilled")
    four = (scheduler, "euler", 4)
    many = (scheduler, "ddim", cfg["teacher_steps"])
    prompts = [PROMPT] * cfg["samples"]
    per_seed: dict[str, list[dict[str, Any]]] = {}
    for seed in ctx.seeds:
        noise_seed = 777 + seed
        held_out = toy.shape_images(cfg["samples"], seed=6000 + seed, shapes=("disc",), colours=("red",),
                                    backgrounds=("black", "grey"))
        per_seed.setdefault("clean", []).append({**measure(toy.encode(vae, [r[0] for r in held_out])), "seed": seed})
        per_seed.setdefault("teacher-20step", []).append(
            {**measure(toy.sample(teacher, prompts, text, *many, noise_seed)), "seed": seed})
        per_seed.setdefault("teacher-4step", []).append(
            {**measure(toy.sample(teacher, prompts, text, *four, noise_seed)), "seed": seed})
        student = UNet2DConditionModel.from_pretrained(student_dir)
        per_seed.setdefault("distilled", []).append(
            {**measure(toy.sample(student, prompts, text, *four, noise_seed)), "seed": seed})
        rows = toy.shape_images(cfg["targets"], seed=1000 + seed, shapes=("disc",), colours=("red",),
                                backgrounds=("grey",))
        targets = Dataset.from_list([{"image": r[0], "caption": PROMPT} for r in rows],
                                    features=Features({"image": Image(), "caption": Value("string")}))
        for name, plugins, options in (
            ("plain", [], {}),
            ("pso", [pso], {"pso_class_prompt": PROMPT, "pso_num_references": cfg["references"], "pso_seed": seed}),
        ):
            tuned = fine_tune(student_dir, targets, plugins, options, cfg, seed)
            result = {**measure(toy.sample(tuned, prompts, text, *four, noise_seed)), "seed": seed}
            per_seed.setdefault(name, []).append(result)
        ctx.log(f"  seed {seed} " + "  ".join(f"{k} distance {v[-1]['distance']:.3f} style {v[-1]['style']:.2f}"
                                              for k, v in per_seed.items()))
    notes = {"clean": "held-out clean red discs (half black, half grey): the metric's floor",
             "teacher-20step": "the teacher, 20 DDIM steps", "teacher-4step": "the teacher, 4 Euler steps",
             "distilled": "the distilled model, 4 Euler steps (before tuning)",
             "plain": "distilled + plain denoising loss on the grey-style discs, 4 steps",
             "pso": "distilled + pso (Diffusion-DPO form, frozen-copy reference) on the same, 4 steps"}
    return {
        "rows": summarize_rows(per_seed, ["distance", "style", "background"], notes),
        "metrics": [["distance", "distance to clean (↓)"], ["style", "share in the new style"],
                    ["background", "background black→grey (0→1)"]],
        "config": cfg,
        "extra": {},
    }
