"""BOB: synthetic training data for a few-shot shape classifier from a text-to-image model fine-tuned with the class-
agnostic attribute (the background) in its captions, marginalised out at generation.

Built once and cached (:mod:`._diffusion_toy`'s deterministic latent space, the tiny UNet, a text encoder of 16
tokens): a base text-to-image model trained with the ε-loss on shapes of any kind and colour on 4 backgrounds,
captioned by the background only ("an object, green"): it knows backgrounds, not the classes. Per seed, the
few real images: 4 red shapes per class (square, disc, bar), each class photographed on one background only
(square on green, disc on blue, bar on grey) — the spurious correlation of a small real set. The base model is
fully fine-tuned on them through ``compose(DiffusionTrainer, ...)``, same steps / batch / learning rate: *plain*
captions "a {class}", or ``bob`` with ``bob_template="a {class}, {background}"`` (the background from a dataset
column). 30 synthetic latents per class come from each (10 DDIM steps, guidance 0): plain with "a {class}", BOB
with the prompts of ``ftplugins.methods.bob.marginal.plan_prompts`` (the background drawn from the real images'
pool independently of the class, ``pool`` mode) — the prompts ``generate_synthetic`` uses, sampled here in latent
space (the toy's random decoder has no images to give). A logistic-regression classifier on the latents (and their per-channel pooled statistics) is
trained on the 12 real images alone, on real + plain synthetic, and on real + BOB synthetic; ``acc`` = accuracy
on 180 test images (every class on every one of the three backgrounds, equally). ``fidelity`` (diagnostic) = the
share of a synthetic set that an oracle classifier (trained on 600 real images on all backgrounds) assigns to the
prompted class; ``own_background`` (diagnostic) = the share whose background is their class's one background in the
real set (each latent matched to the nearest per-background mean of the test images). The claim: real + BOB beats
real-only and real + plain, in direction.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks.quality.scenarios._common import Context, cached_build, summarize_rows

NAME = "bob-synthetic"
TITLE = "BOB: synthetic data for a few-shot classifier, attributes marginalised out vs plain fine-tuning"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
NEEDS_DECODER = False
PLOT_METRICS = ("acc", "fidelity", "own_background")
CLASSES = ["square", "disc", "bar"]
REAL_BACKGROUND = {"square": "green", "disc": "blue", "bar": "grey"}
TEST_BACKGROUNDS = ("green", "blue", "grey")
TEMPLATE = "a {class}, {background}"
CAPTION_TOKENS = 16

#: The toy world: shapes anywhere in the image, the ~70k-parameter ``tiny.tiny_unet``, a base model whose captions
#: name the background only. ``bob-synthetic-capable`` changes each (see there).
WORLD = dict(centred=False, unet_width=None, base_caption="an object, {background}")
FULL = dict(base_images=1536, base_steps=500, base_batch=32, base_lr=1e-3, real_per_class=4, ft_steps=120, ft_batch=4,
            ft_lr=3e-4, synthetic_per_class=30, sample_steps=10, test_per_cell=20, oracle_images=600, **WORLD)
SMOKE = dict(base_images=16, base_steps=2, base_batch=4, base_lr=1e-3, real_per_class=2, ft_steps=2, ft_batch=2,
             ft_lr=3e-4, synthetic_per_class=2, sample_steps=4, test_per_cell=2, oracle_images=12, **WORLD)


def text_parts():
    """The local tokenizer at 16 tokens and a 2-layer CLIP text encoder over it (the attribute must fit)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from ftplugins.diffusion import tiny

    tokenizer = tiny.tiny_tokenizer()
    tokenizer.model_max_length = CAPTION_TOKENS
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=tiny.TEXT_WIDTH, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CAPTION_TOKENS,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return tokenizer, CLIPTextModel(config).eval()


def world(cfg: dict[str, Any]):
    from benchmarks.quality.scenarios import _diffusion_toy as toy

    calibration = toy.shape_images(256, seed=99, backgrounds=tuple(toy.BACKGROUNDS), centred=cfg["centred"])
    vae = toy.deterministic_vae([r[0] for r in calibration])
    tokenizer, encoder = text_parts()
    return vae, tokenizer, encoder, toy.TextCache(encoder, tokenizer), toy.noise_scheduler()


def build_base(cfg: dict[str, Any], ctx: Context) -> str:
    def build(folder: str) -> dict[str, Any]:
        from benchmarks.quality.scenarios import _diffusion_toy as toy
        from ftplugins.diffusion import tiny

        vae, _, _, text, scheduler = world(cfg)
        rows = toy.shape_images(cfg["base_images"], seed=11, backgrounds=tuple(toy.BACKGROUNDS), centred=cfg["centred"])
        latents = toy.encode(vae, [r[0] for r in rows])
        captions = [cfg["base_caption"].format(shape=shape, background=background) for _, shape, _, background in rows]
        width = cfg["unet_width"]
        unet = tiny.tiny_unet(seed=0, **({} if width is None else dict(
            block_out_channels=(width, 2 * width), attention_head_dim=8, norm_num_groups=8)))
        ctx.log(f"  base model ({sum(p.numel() for p in unet.parameters()):,} parameters): {cfg['base_steps']} steps "
                f"× {cfg['base_batch']} on {len(rows)} shapes, captions '{cfg['base_caption']}'")
        unet = toy.train_denoiser(unet, latents, captions,
                                  text, scheduler, cfg["base_steps"], cfg["base_batch"], cfg["base_lr"], seed=0,
                                  log=ctx.log)
        unet.save_pretrained(os.path.join(folder, "base"))
        return {}

    recipe = {"version": 2, **{k: cfg[k] for k in ("base_images", "base_steps", "base_batch", "base_lr")},
              **{k: cfg[k] for k in WORLD if cfg[k] != WORLD[k]}}  # the original world keeps its cache key
    folder, _ = cached_build(ctx, "bob-toy", recipe, build)
    return os.path.join(folder, "base")


def real_set(cfg: dict[str, Any], seed: int):
    """The few real images: each class on its one background, with its class and background columns."""
    import random

    from datasets import ClassLabel, Dataset, Features, Image, Value

    from benchmarks.quality.scenarios import _diffusion_toy as toy

    rng = random.Random(1000 + seed)
    rows = []
    for label, name in enumerate(CLASSES):
        for _ in range(cfg["real_per_class"]):
            background = REAL_BACKGROUND[name]
            rows.append({"image": toy.draw_shape(name, "red", background, rng, cfg["centred"]), "label": label,
                         "background": background, "caption": f"a {name}"})
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES), "background": Value("string"),
                         "caption": Value("string")})
    return Dataset.from_list(rows, features=features)


def labelled(n_per_cell: int, seed: int, backgrounds: tuple[str, ...], centred: bool):
    """(images, labels) with every class on every background ``n_per_cell`` times (red shapes)."""
    import random

    from benchmarks.quality.scenarios import _diffusion_toy as toy

    rng = random.Random(seed)
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for background in backgrounds:
            for _ in range(n_per_cell):
                images.append(toy.draw_shape(name, "red", background, rng, centred))
                labels.append(label)
    return images, labels


def fine_tune(base_dir: str, dataset: Any, plugins: list, options: dict[str, Any], cfg: dict[str, Any], seed: int):
    from diffusers import UNet2DConditionModel
    from transformers.trainer_callback import PrinterCallback

    import ftplugins
    from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer

    vae, tokenizer, encoder, _, scheduler = world(cfg)
    with tempfile.TemporaryDirectory(prefix="ftplugins-bob-synthetic-") as out:
        args = DiffusionConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                               max_steps=cfg["ft_steps"], per_device_train_batch_size=cfg["ft_batch"],
                               learning_rate=cfg["ft_lr"], lr_scheduler_type="constant", weight_decay=0.0,
                               logging_steps=max(1, cfg["ft_steps"] // 4), disable_tqdm=True, seed=seed,
                               data_seed=seed, dataloader_num_workers=0)
        trainer = ftplugins.compose(DiffusionTrainer, plugins, **options)(
            model=UNet2DConditionModel.from_pretrained(base_dir), args=args, train_dataset=dataset,
            text_encoder=encoder, vae=vae, noise_scheduler=scheduler, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        captions = list(trainer.train_dataset["caption"])
    return trainer.model.eval(), captions


def features_of(latents: Any):
    """The flattened latent and, per channel, its spatial mean / max / min / std (shapes sit anywhere: the pooled
    statistics give a linear classifier some translation invariance)."""
    import torch

    return torch.cat([latents.flatten(1), latents.mean((2, 3)), latents.amax((2, 3)), latents.amin((2, 3)),
                      latents.std((2, 3))], dim=1)


def logistic_regression(latents: Any, labels: Any, seed: int, steps: int = 300):
    """A linear softmax classifier on standardised :func:`features_of` (Adam, full batch, weight decay 1e-3)."""
    import torch

    torch.manual_seed(seed)
    x = features_of(latents)
    mean, std = x.mean(0), x.std(0) + 1e-6
    layer = torch.nn.Linear(x.shape[1], len(CLASSES))
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(layer((x - mean) / std), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda f: layer((features_of(f) - mean) / std).argmax(dim=1)


def nearest_background(latents: Any, background_means: Any) -> Any:
    """Index into :data:`TEST_BACKGROUNDS` of the per-background mean nearest each latent's per-channel spatial mean
    (the background fills most of an image)."""
    return (latents.mean((2, 3))[:, None, :] - background_means[None]).pow(2).sum(-1).argmin(1)


def own_background_share(synthetic: Any, labels: Any, background_means: Any) -> float:
    """The share of synthetic latents whose background is their class's one background in the real set. 1 = the
    generator repeats the real set's spurious pairing."""
    own = [TEST_BACKGROUNDS.index(REAL_BACKGROUND[CLASSES[int(y)]]) for y in labels]
    return float((nearest_background(synthetic, background_means) == labels.new_tensor(own)).float().mean())


def background_probe(latents: Any, backgrounds: list[str], background_means: Any) -> float:
    """How often :func:`nearest_background` names a real test image's background (``own_background``'s check)."""
    nearest = nearest_background(latents, background_means)
    return float(sum(TEST_BACKGROUNDS[int(i)] == b for i, b in zip(nearest, backgrounds)) / len(backgrounds))


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE if ctx.smoke else FULL)


def run_with(ctx: Context, cfg: dict[str, Any]) -> dict[str, Any]:
    """The scenario in the world and at the budget of ``cfg`` (:data:`FULL`; ``bob-synthetic-capable``)."""
    import torch

    from benchmarks.quality.scenarios import _diffusion_toy as toy
    from ftplugins.methods.bob import plugin as bob
    from ftplugins.methods.bob.attributes import AttributePool
    from ftplugins.methods.bob.marginal import plan_prompts

    base_dir = build_base(cfg, ctx)
    vae, _, _, text, scheduler = world(cfg)
    test_images, test_labels = labelled(cfg["test_per_cell"], seed=7000, backgrounds=TEST_BACKGROUNDS,
                                        centred=cfg["centred"])
    test_x, test_y = toy.encode(vae, test_images), torch.tensor(test_labels)
    test_backgrounds = [b for _ in CLASSES for b in TEST_BACKGROUNDS for _ in range(cfg["test_per_cell"])]
    background_means = torch.stack([test_x[[i for i, t in enumerate(test_backgrounds) if t == b]].mean((0, 2, 3))
                                    for b in TEST_BACKGROUNDS])
    oracle_images, oracle_labels = labelled(max(1, cfg["oracle_images"] // 12), seed=8000,
                                            backgrounds=tuple(toy.BACKGROUNDS), centred=cfg["centred"])
    oracle = logistic_regression(toy.encode(vae, oracle_images), torch.tensor(oracle_labels), seed=0)
    per_seed: dict[str, list[dict[str, Any]]] = {}
    per_seed["oracle"] = [{"acc": float((oracle(test_x) == test_y).float().mean()), "fidelity": 1.0}]
    for seed in ctx.seeds:
        real = real_set(cfg, seed)
        real_x, real_y = toy.encode(vae, list(real["image"])), torch.tensor(real["label"])
        n = cfg["synthetic_per_class"]
        plain_model, _ = fine_tune(base_dir, real, [], {}, cfg, seed)
        plain_prompts = [f"a {c}" for c in CLASSES for _ in range(n)]
        bob_model, _ = fine_tune(base_dir, real, [bob], {"bob_template": TEMPLATE}, cfg, seed)
        pool = AttributePool(TEMPLATE, CLASSES, [{"class": CLASSES[r["label"]],
                                                  "attributes": {"background": r["background"]}} for r in real])
        plan = plan_prompts(pool, per_class=n, mode="pool", seed=seed)
        synthetic_y = torch.tensor([CLASSES.index(p["label"]) for p in plan])
        assert synthetic_y.tolist() == [CLASSES.index(c.split(" ", 1)[1]) for c in plain_prompts]
        sets = {
            "real+plain": toy.sample(plain_model, plain_prompts, text, scheduler, "ddim", cfg["sample_steps"], seed),
            "real+bob": toy.sample(bob_model, [p["prompt"] for p in plan], text, scheduler, "ddim",
                                   cfg["sample_steps"], seed),
        }
        classifier = logistic_regression(real_x, real_y, seed)
        per_seed.setdefault("real-only", []).append(
            {"acc": float((classifier(test_x) == test_y).float().mean()), "seed": seed})
        for name, synthetic in sets.items():
            classifier = logistic_regression(torch.cat([real_x, synthetic]), torch.cat([real_y, synthetic_y]), seed)
            per_seed.setdefault(name, []).append({
                "acc": float((classifier(test_x) == test_y).float().mean()),
                "fidelity": float((oracle(synthetic) == synthetic_y).float().mean()),
                "own_background": own_background_share(synthetic, synthetic_y, background_means), "seed": seed})
        ctx.log(f"  seed {seed} " + "  ".join(f"{k} acc {v[-1]['acc']:.3f}" for k, v in per_seed.items()
                                              if k != "oracle"))
    notes = {"oracle": "trained on 600 real images on all backgrounds (the ceiling; fidelity probe)",
             "real-only": "the 12 real images (each class on its one background)",
             "real+plain": "real + 30/class from the plainly fine-tuned model ('a {class}')",
             "real+bob": "real + 30/class from the BOB-fine-tuned model, backgrounds marginalised out"}
    return {
        "rows": summarize_rows(per_seed, ["acc", "fidelity", "own_background"], notes),
        "metrics": [["acc", "test accuracy"], ["fidelity", "synthetic judged as its class"],
                    ["own_background", "synthetic on its class's real background"]],
        "config": cfg,
        "extra": {"background_probe": background_probe(test_x, test_backgrounds, background_means)},
    }
