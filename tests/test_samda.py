"""SAMDA: a frozen generic encoder (tiny SAM from a config) fused into a diffusers UNet2DModel expert; Dice + CE."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.samda import plugin
from ftplugins.methods.samda.loss import soft_dice_loss
from ftplugins.methods.samda.tiny import tiny_sam, tiny_segmentation_unet


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam")
    tiny_sam().save_pretrained(path)
    return str(path)


def blobs(count=4, size=32, seed=0):
    """Grey images with bright discs; the mask marks the discs (class 1)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(count):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).long()
        image = 0.2 + 0.6 * mask.float() + 0.1 * torch.randn(size, size, generator=g)
        images.append(image.unsqueeze(0).tolist())
        masks.append(mask.tolist())
    return Dataset.from_dict({"image": images, "mask": masks})


def build(tmp_path, sam_dir, data=None, steps=2, eval_dataset=None, **options):
    from transformers import Trainer, TrainingArguments

    cls = ftplugins.compose(Trainer, [plugin], samda_encoder=sam_dir, **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=steps,
                             per_device_train_batch_size=2, learning_rate=1e-2, save_strategy="no",
                             disable_tqdm=True, seed=0)
    return cls(model=tiny_segmentation_unet(), args=args, train_dataset=data if data is not None else blobs(),
               eval_dataset=eval_dataset)


def test_the_generic_encoder_gets_no_gradient_and_stays_unchanged_while_the_expert_and_adapter_train(tmp_path,
                                                                                                   sam_dir):
    trainer = build(tmp_path, sam_dir)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    encoder = [n for n in before if n.startswith("encoder.")]
    assert encoder and all(torch.equal(before[n], after[n]) for n in encoder)
    assert all(after[n].grad is None and not after[n].requires_grad for n in encoder)
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("expert.") for n in changed) and any(n.startswith("adapter.") for n in changed)
    assert not model.encoder.training  # kept in eval mode although the Trainer set model.train()


def test_with_the_fusion_disabled_the_model_is_the_expert_alone(sam_dir):
    from ftplugins.methods.samda.model import SamdaModel, load_generic_encoder

    expert = tiny_segmentation_unet()
    model = SamdaModel(expert, load_generic_encoder(sam_dir), fusion="none")
    assert model.adapter is None
    x = blobs(2)["image"]
    x = torch.tensor(x)
    with torch.no_grad():
        assert torch.equal(model(x).logits, expert(x, 0).sample)


def test_the_fused_model_starts_as_the_expert_and_after_training_departs_from_it(tmp_path, sam_dir):
    trainer = build(tmp_path, sam_dir, steps=3)
    model, x = trainer.model, torch.tensor(blobs(2, seed=1)["image"])
    model.eval()
    with torch.no_grad():
        model._generic = None
        alone = model.expert(x, 0).sample
        assert torch.equal(model(x).logits, alone)  # the adapter's last conv starts at zero
    trainer.train()
    model.eval()
    with torch.no_grad():
        fused, alone = model(x).logits, model.expert(x, 0).sample  # expert without the generic features
    assert not torch.allclose(fused, alone)


def test_soft_dice_loss_is_the_formula():
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.7]])  # class-1 probabilities of a 2x2 image
    logits = torch.stack([torch.zeros(2, 2), torch.log(probs / (1 - probs))]).unsqueeze(0)
    labels = torch.tensor([[[1, 0], [0, 1]]])
    p1, y1 = probs, labels[0].float()
    dice1 = (2 * (p1 * y1).sum() + 1e-5) / (p1.sum() + y1.sum() + 1e-5)
    p0, y0 = 1 - probs, 1 - y1
    dice0 = (2 * (p0 * y0).sum() + 1e-5) / (p0.sum() + y0.sum() + 1e-5)
    assert torch.allclose(soft_dice_loss(logits, labels), 1 - (dice0 + dice1) / 2, atol=1e-6)
    perfect = torch.stack([(1 - y1) * 40 - 20, y1 * 40 - 20]).unsqueeze(0)
    assert soft_dice_loss(perfect, labels) < 1e-6


def test_the_loss_is_dice_plus_ce(sam_dir):
    from ftplugins.methods.samda.model import SamdaModel, load_generic_encoder

    model = SamdaModel(tiny_segmentation_unet(), load_generic_encoder(sam_dir), dice_weight=0.5, ce_weight=2.0)
    rows = blobs(2)
    x, y = torch.tensor(rows["image"]), torch.tensor(rows["mask"])
    with torch.no_grad():
        out = model(x, labels=y)
    expected = 2.0 * torch.nn.functional.cross_entropy(out.logits, y) + 0.5 * soft_dice_loss(out.logits, y)
    assert torch.allclose(out.loss, expected)


def test_any_automodel_image_encoder_is_a_generic_component(tmp_path):
    from transformers import ViTConfig, ViTModel

    from ftplugins.methods.samda.model import SamdaModel, generic_features

    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8, num_channels=3), add_pooling_layer=False)
    x = torch.rand(2, 1, 32, 32)
    assert generic_features(vit, x).shape == (2, 16, 4, 4)  # CLS dropped, 16 patch tokens as a 4x4 grid
    vit.save_pretrained(tmp_path / "vit")
    trainer = build(tmp_path / "out", str(tmp_path / "vit"))
    assert trainer.model.adapter.project.in_channels == 16
    trainer.train()


@pytest.mark.parametrize("case, message", [
    ("shape", "mask shape (32, 30) does not match its image's (H, W) (32, 32)"),
    ("range", "mask label 2 is out of range; expected class indices 0..1"),
    ("negative", "mask label -1 is out of range"),
])
def test_bad_rows_are_one_line(tmp_path, sam_dir, case, message):
    from datasets import Dataset

    rows = blobs(2)
    masks = [list(map(list, m)) for m in rows["mask"]]
    if case == "shape":
        masks[1] = [r[:30] for r in masks[1]]
    else:
        masks[1][3][4] = 2 if case == "range" else -1
    data = Dataset.from_dict({"image": rows["image"], "mask": masks})
    with pytest.raises(FtpluginsError) as err:
        build(tmp_path, sam_dir, data).train()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_options_and_missing_columns_are_refused(tmp_path, sam_dir):
    with pytest.raises(OptionError, match="samda_fusion"):
        build(tmp_path, sam_dir, samda_fusion="concat")
    with pytest.raises(FtpluginsError, match="no column 'picture'"):
        build(tmp_path, sam_dir, samda_image_column="picture")
    with pytest.raises(FtpluginsError, match="needs --samda_encoder"):
        build(tmp_path, "")
    with pytest.raises(FtpluginsError, match="samda_bottleneck 'middle'"):
        build(tmp_path, sam_dir, samda_bottleneck="middle")


def test_trl_trainers_are_refused(sam_dir):
    from trl import SFTTrainer

    with pytest.raises(FtpluginsError, match="not SFTTrainer"):
        ftplugins.compose(SFTTrainer, [plugin], samda_encoder=sam_dir)(model=tiny_segmentation_unet())


def test_the_diffusion_trainer_refuses_samda_by_name(tmp_path, sam_dir):
    from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny

    cls = ftplugins.compose(DiffusionTrainer, [plugin], samda_encoder=sam_dir)
    args = DiffusionConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no")
    with pytest.raises(FtpluginsError, match="plugin samda applies to Trainer, not to DiffusionTrainer"):
        cls(model=tiny.tiny_unet(), args=args, train_dataset=tiny.shapes_dataset(2),
            text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(), noise_scheduler=tiny.ddpm_scheduler(),
            processing_class=tiny.tiny_tokenizer())


def test_the_saved_model_loads_into_a_fresh_samda_model_with_identical_outputs(tmp_path, sam_dir):
    from safetensors.torch import load_file

    from ftplugins.methods.samda.model import SamdaModel, load_generic_encoder

    trainer = build(tmp_path / "run", sam_dir)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    fresh = SamdaModel(tiny_segmentation_unet(seed=1), load_generic_encoder(sam_dir))
    fresh.load_state_dict(load_file(str(tmp_path / "saved" / "model.safetensors")))
    x = torch.tensor(blobs(2, seed=3)["image"])
    trainer.model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, trainer.model(x).logits)


def test_evaluation_reports_the_dice_ce_loss(tmp_path, sam_dir):
    """The trainer's eval_dataset gets the columns renamed like the train split (a dataset given to ``evaluate()``
    itself skips the plugins: rename it with ``ftplugins.methods.samda.data.rename_columns``)."""
    rows = blobs(2, seed=4)
    trainer = build(tmp_path, sam_dir, eval_dataset=rows)
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(torch.tensor(rows["image"]), labels=torch.tensor(rows["mask"])).loss
    assert metrics["eval_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_the_adaptation_module_learns_at_its_own_rate(tmp_path, sam_dir):
    """samda_adapter_lr_scale: the optimizer gives the adapter learning_rate x scale (no decay on biases and norms),
    everything else the base rate; 1 keeps the trainer's own optimizer (one rate)."""
    from transformers import Trainer

    trainer = build(tmp_path, sam_dir, steps=1, samda_adapter_lr_scale=10.0)
    trainer.args.weight_decay = 0.01
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = set(Trainer.get_decay_parameter_names(None, trainer.model))  # not biases nor norms
    seen = set()
    for group in trainer.optimizer.param_groups:
        kinds = {names[id(p)].startswith("adapter.") for p in group["params"]}
        assert len(kinds) == 1  # a group holds adapter parameters or others, never both
        assert group["lr"] == (1e-1 if kinds == {True} else 1e-2)
        decays = {names[id(p)] in decayed for p in group["params"]}
        assert len(decays) == 1 and group["weight_decay"] == (0.01 if decays == {True} else 0.0)
        seen |= {names[id(p)] for p in group["params"]}
    assert seen == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    one_rate = build(tmp_path / "one", sam_dir, steps=1, samda_adapter_lr_scale=1.0)
    one_rate.create_optimizer()
    assert {g["lr"] for g in one_rate.optimizer.param_groups} == {1e-2}
    with pytest.raises((ValueError, OptionError), match="samda_adapter_lr_scale"):
        build(tmp_path / "bad", sam_dir, samda_adapter_lr_scale=0.0)
