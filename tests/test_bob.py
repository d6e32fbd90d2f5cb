"""BOB: the caption template puts attributes only where it declares them; fine-tuning captions come from it (user
function or columns) and the attribute pool is saved; at generation the attributes are independent of the class
(counted); the real captions are never used; generate_synthetic writes a loadable image folder atomically; bad
input is one line each."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import pytest
from conftest import cpu_args

pytest.importorskip("diffusers")

import ftplugins  # noqa: E402
from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny  # noqa: E402
from ftplugins.errors import FtpluginsError, OptionError  # noqa: E402
from ftplugins.methods.bob import generate_synthetic  # noqa: E402
from ftplugins.methods.bob import plugin as bob  # noqa: E402
from ftplugins.methods.bob.attributes import FILENAME, AttributePool  # noqa: E402
from ftplugins.methods.bob.cli import add_subparser  # noqa: E402
from ftplugins.methods.bob.marginal import plan_prompts  # noqa: E402
from ftplugins.methods.bob.template import CaptionTemplate  # noqa: E402

BACKGROUNDS = {"grass": (40, 160, 60), "sand": (200, 180, 120), "sky": (90, 140, 230)}
CLASSES = ["red square", "blue disc"]


def real_dataset(n_per_class=3, correlated=True):
    """Few real images per class; with ``correlated`` each class was photographed on one background only."""
    import random

    from datasets import ClassLabel, Dataset, Features, Image, Value

    rng = random.Random(0)
    rows = []
    for label, name in enumerate(CLASSES):
        colour, shape = name.split()
        for i in range(n_per_class):
            background = ["grass", "sand"][label] if correlated else rng.choice(sorted(BACKGROUNDS))
            rows.append({"image": tiny.shape_image(shape, colour, BACKGROUNDS[background], rng), "label": label,
                         "background": background, "caption": f"real photo {label}-{i} of a {name}"})
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES), "background": Value("string"),
                         "caption": Value("string")})
    return Dataset.from_list(rows, features=features)


def make_trainer(tmp_path, dataset=None, **options):
    trainer_cls = ftplugins.compose(DiffusionTrainer, [bob], **options)
    args = cpu_args(DiffusionConfig, tmp_path / "run", per_device_train_batch_size=2)
    return trainer_cls(model=tiny.tiny_unet(), args=args, train_dataset=dataset or real_dataset(),
                       text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                       noise_scheduler=tiny.ddpm_scheduler(),
                       processing_class=tiny.tiny_tokenizer())


def tiny_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=tiny.tiny_vae(), text_encoder=tiny.tiny_text_encoder(),
                                   tokenizer=tiny.tiny_tokenizer(), unet=tiny.tiny_unet(),
                                   scheduler=tiny.few_step_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pool_of(rows, template="a photo of a {class}, {background}"):
    return AttributePool(template, sorted({c for c, _ in rows}),
                         [{"class": c, "attributes": a} for c, a in rows])


# --- the template ------------------------------------------------------------------------------------------------


def test_the_template_puts_attributes_only_where_declared():
    template = CaptionTemplate("a {class} photographed on {background}.")
    attributes = {"background": "grass {pose} {class}", "pose": "sitting", "colour": "crimson"}
    caption = template.render("red square", attributes)
    assert caption == "a red square photographed on grass {pose} {class}."  # one pass: texts stay literal
    assert "sitting" not in caption and "crimson" not in caption  # undeclared attributes go nowhere
    assert template.attributes == ["background"]
    two = CaptionTemplate("{background}: a {class}, {pose}")
    assert two.render("disc", attributes) == "grass {pose} {class}: a disc, sitting"


@pytest.mark.parametrize("text, message", [
    ("a photo of {background}", r"needs the field \{class\} exactly once"),
    ("a {class} and a {class}, {background}", r"needs the field \{class\} exactly once"),
    ("a photo of a {class}", "declares no attribute"),
    ("a {class}, {background}, {background}", "appear more than once"),
    ("a {class}, {background:>10}", "is not a plain name"),
    ("a {class}, {background", "bob_template"),
])
def test_bad_templates_are_one_line_option_errors(tmp_path, text, message):
    with pytest.raises(OptionError, match="bob_template") as info:
        ftplugins.compose(DiffusionTrainer, [bob], bob_template=text)
    assert "\n" not in str(info.value)
    with pytest.raises(FtpluginsError, match=message):
        CaptionTemplate(text)


# --- fine-tuning ---------------------------------------------------------------------------------------------------


def test_fine_tuning_captions_come_from_the_template_and_the_pool_is_saved(tmp_path):
    dataset = real_dataset()
    trainer = make_trainer(tmp_path, dataset)
    expected = [f"a photo of a {CLASSES[r['label']]}, {r['background']}" for r in dataset]
    assert trainer.train_dataset["caption"] == expected  # the real captions are replaced, row for row
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].tolist() == trainer.tokenize(expected[:2]).tolist()
    trainer.train()
    pool = AttributePool.load(str(tmp_path / "run"))
    assert pool.classes == CLASSES and pool.captions() == expected
    assert [r["attributes"] for r in pool.rows] == [{"background": r["background"]} for r in dataset]
    assert not os.path.exists(tmp_path / "run" / ".ftplugins-staging")


def background_of(image, row):
    """A user attribute function: the background from the corner pixel (what a captioner would say)."""
    corner = image.getpixel((0, 0))
    return {"background": min(BACKGROUNDS, key=lambda b: sum((x - y) ** 2 for x, y in zip(BACKGROUNDS[b], corner))),
            "unused": "never in a caption"}


def test_attributes_from_a_user_function(tmp_path, monkeypatch):
    (tmp_path / "bob_user_attrs.py").write_text("from test_bob import background_of\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    dataset = real_dataset(correlated=False).remove_columns(["background"])  # the function must find them
    trainer = make_trainer(tmp_path, dataset, bob_attribute_fn="bob_user_attrs:background_of")
    truth = real_dataset(correlated=False)["background"]
    assert trainer.train_dataset["caption"] == [f"a photo of a {CLASSES[r['label']]}, {b}"
                                                for r, b in zip(dataset, truth)]
    assert not any("never" in c for c in trainer.train_dataset["caption"])


def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch):
    from datasets import Dataset

    cases = [
        (dict(dataset=real_dataset().remove_columns(["background"])), r"needs \['background'\]"),
        (dict(dataset=real_dataset(), bob_class_column="species"), r"needs \['species'\]"),
        (dict(dataset=Dataset.from_list([{"image": tiny.shape_image("disc", "red"), "label": 3, "background": "sky",
                                          "caption": "x"}])), "expected a class name"),
        (dict(dataset=real_dataset().map(lambda r, i: {"background": "  " if i == 2 else r["background"]},
                                         with_indices=True)), r"row 2: attribute\(s\) \['background'\] have no text"),
        (dict(dataset=real_dataset(), bob_attribute_fn="no_such_module_xyz:f"), "cannot import module"),
        (dict(dataset=real_dataset(), bob_marginalize="uniformly"), "bob_marginalize"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FtpluginsError, match=message) as info:
            make_trainer(tmp_path, **kwargs)
        assert "\n" not in str(info.value)
    (tmp_path / "bob_bad_fn.py").write_text("def f(image, row):\n    return 'grass'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FtpluginsError, match="returned str for row 0"):
        make_trainer(tmp_path, bob_attribute_fn="bob_bad_fn:f")


# --- marginalising at generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pool", "independent"])
def test_generation_attributes_are_independent_of_the_class(mode):
    """Real data tie each class to its backgrounds; the generation plan's counts per class are identical and follow
    the pool's frequencies."""
    rows = ([("red square", {"background": "grass", "light": "day"})] * 6
            + [("blue disc", {"background": "sand", "light": "night"})] * 3
            + [("green bar", {"background": "sky", "light": "day"})])
    pool = pool_of(rows, "a {class} on {background} at {light}")
    plan = plan_prompts(pool, per_class=400, mode=mode, seed=1)
    counts = {c: Counter(tuple(sorted(p["attributes"].items())) for p in plan if p["label"] == c)
              for c in pool.classes}
    assert counts["red square"] == counts["blue disc"] == counts["green bar"]  # a product table: independent
    backgrounds = Counter(p["attributes"]["background"] for p in plan if p["label"] == "blue disc")
    for value, share in (("grass", 0.6), ("sand", 0.3), ("sky", 0.1)):  # the real images' frequencies
        assert abs(backgrounds[value] / 400 - share) < 0.06, (value, backgrounds)
    combos = set(counts["blue disc"])
    if mode == "pool":  # whole attribute sets of real images
        assert combos <= {tuple(sorted(a.items())) for _, a in rows}
    else:  # each attribute on its own: combinations no real image had
        assert (("background", "sand"), ("light", "day")) in combos
    assert all(p["prompt"] == f"a {p['label']} on {p['attributes']['background']} at {p['attributes']['light']}"
               for p in plan)


def test_generate_synthetic_writes_a_labelled_image_folder_without_the_real_captions(tmp_path):
    from datasets import load_dataset

    trainer = make_trainer(tmp_path)
    trainer.train()
    pipe = tiny_pipeline()
    pipe.unet = trainer.model
    prompts = []
    real_call = type(pipe).__call__

    def spy(self, prompt=None, **kwargs):
        prompts.extend(prompt)
        return real_call(self, prompt=prompt, **kwargs)

    type(pipe).__call__, original = spy, real_call
    try:
        report = generate_synthetic(pipe, str(tmp_path / "run"), str(tmp_path / "synthetic"), per_class=3,
                                    batch_size=4)
    finally:
        type(pipe).__call__ = original
    real_captions = set(real_dataset()["caption"])
    assert prompts and not real_captions & set(prompts)  # the real captions are never used
    data = load_dataset("imagefolder", data_dir=str(tmp_path / "synthetic"), split="train")
    assert len(data) == 6 and Counter(data["label"]) == {c: 3 for c in CLASSES}
    assert data[0]["image"].size == (tiny.RESOLUTION, tiny.RESOLUTION)
    assert sorted(data["prompt"]) == sorted(prompts)
    for row in data:
        assert row["prompt"] == f"a photo of a {row['label']}, {row['attributes']['background']}"
    assert report["per_class"] == {c: 3 for c in CLASSES} and report["marginalize"] == "pool"
    on_disk = json.load(open(tmp_path / "synthetic" / "bob_report.json"))
    assert on_disk["attribute_counts_synthetic"]["background"]["red square"] == \
        on_disk["attribute_counts_synthetic"]["background"]["blue disc"]
    finetuning = set(AttributePool.load(str(tmp_path / "run")).captions())
    assert report["prompts_equal_to_a_finetuning_caption"] == sum(p in finetuning for p in prompts)


def test_an_interrupted_generation_leaves_nothing_and_a_full_folder_is_kept(tmp_path):
    pool = pool_of([("red square", {"background": "grass"}), ("blue disc", {"background": "sand"})])
    pipe = tiny_pipeline()
    calls = []

    class Failing:
        def __call__(self, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("killed")
            return pipe(**kwargs)

    with pytest.raises(RuntimeError, match="killed"):
        generate_synthetic(Failing(), pool, str(tmp_path / "out"), per_class=2, batch_size=2)
    assert sorted(os.listdir(tmp_path)) == []  # no half dataset, no staging folder
    generate_synthetic(pipe, pool, str(tmp_path / "out"), per_class=1)
    with pytest.raises(FtpluginsError, match="is not empty; choose a new folder or pass overwrite=True"):
        generate_synthetic(pipe, pool, str(tmp_path / "out"), per_class=1)
    report = generate_synthetic(pipe, pool, str(tmp_path / "out"), per_class=2, overwrite=True)
    assert report["images"] == 4 and len(open(tmp_path / "out" / "metadata.jsonl").readlines()) == 4


def run_cli(argv):
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_generates_from_a_saved_pipeline_and_a_full_fine_tune(tmp_path, capsys):
    trainer = make_trainer(tmp_path)
    trainer.train()
    trainer.save_model()
    tiny_pipeline().save_pretrained(str(tmp_path / "pipe"))
    out = tmp_path / "synthetic"
    run_cli(["generate-synthetic", "--pipeline", str(tmp_path / "pipe"), "--unet", str(tmp_path / "run"),
             "--attributes", str(tmp_path / "run"), "--out", str(out), "--per-class", "2", "--classes", "blue disc",
             "--marginalize", "independent"])
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    assert [r["label"] for r in rows] == ["blue disc", "blue disc"]
    assert all(os.path.isfile(out / r["file_name"]) for r in rows)
    assert '"images": 2' in capsys.readouterr().out
    for argv, message in (
        (["--attributes", str(tmp_path / "pipe")], "not a BOB attribute pool"),
        (["--classes", "green bar"], r"classes \['green bar'\]: not classes of the fine-tuning run"),
        (["--per-class", "0"], "per_class=0: expected at least one image per class"),
        (["--pipeline", str(tmp_path / "run")], "no model_index.json there"),
    ):
        base = {"--pipeline": str(tmp_path / "pipe"), "--attributes": str(tmp_path / "run"),
                "--out": str(tmp_path / "other"), "--per-class": "1"}
        base.update(dict(zip(argv[::2], argv[1::2])))
        with pytest.raises(FtpluginsError, match=message):
            run_cli(["generate-synthetic", *[x for kv in base.items() for x in kv]])


def test_bob_is_listed_with_its_command_and_refused_on_other_trainers(tmp_path):
    from trl import SFTTrainer

    parser = argparse.ArgumentParser()
    bob.add_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["generate-synthetic", "--pipeline", "p", "--attributes", "a", "--out", "o",
                              "--per-class", "1"]).per_class == 1
    with pytest.raises(FtpluginsError, match="applies to DiffusionTrainer"):
        ftplugins.compose(SFTTrainer, [bob])(model=tiny.tiny_unet(), args=cpu_args(DiffusionConfig, tmp_path))
