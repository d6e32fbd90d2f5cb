"""gan_augment: MH-GAN's acceptance rule against a closed-form target, marked synthetic rows, train split only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import cpu_args

from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.gan_augment import GanAugmentOptions, augment, plugin
from ftplugins.methods.gan_augment.mh import acceptance_probability, run_chains

FAST = dict(gan_augment_steps=60, gan_augment_hidden=16, gan_augment_chain_length=5)


def normal_logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi))


# A known density ratio: target p = N(1, 1), generator q = N(0, 2^2). The perfect discriminator is
# D = p / (p + q), so logit D = log p - log q.
def perfect_logit(x):
    return normal_logpdf(x, 1.0, 1.0) - normal_logpdf(x, 0.0, 2.0)


def test_acceptance_is_the_textbook_independence_sampler_rule():
    d_cur, d_prop = np.array([0.2, 0.5, 0.9, 0.7]), np.array([0.6, 0.5, 0.3, 0.95])
    ratio = lambda d: d / (1 - d)  # noqa: E731 - the density ratio p_data / p_G a calibrated D gives
    np.testing.assert_allclose(acceptance_probability(d_cur, d_prop), np.minimum(1, ratio(d_prop) / ratio(d_cur)))
    # run_chains takes the same decisions from logits: accept exactly when u < alpha.
    logit = lambda d: np.log(d / (1 - d))  # noqa: E731
    alpha = acceptance_probability(d_cur, d_prop)
    below, above = alpha * 0.999, np.minimum(alpha * 1.001 + 1e-9, 1 - 1e-12)
    state, _ = run_chains(logit(d_cur), logit(d_prop)[:, None], below[:, None])
    assert (state == 0).all()
    state, _ = run_chains(logit(d_cur), logit(d_prop)[:, None], above[:, None])
    np.testing.assert_array_equal(state == 0, alpha >= 1)


def test_chain_with_a_perfect_discriminator_samples_the_target_distribution():
    from scipy import stats

    rng = np.random.default_rng(0)
    n, k = 20000, 60
    start = rng.normal(0.0, 2.0, n)  # chains start at generator samples: the target is reached by MH alone
    proposals = rng.normal(0.0, 2.0, (n, k))
    state, accepted = run_chains(perfect_logit(start), perfect_logit(proposals), rng.random((n, k)))
    final = np.where(state >= 0, proposals[np.arange(n), np.maximum(state, 0)], start)
    assert 0 < accepted.mean() < k
    assert abs(final.mean() - 1.0) < 0.03 and abs(final.std() - 1.0) < 0.03
    assert stats.kstest(final, stats.norm(1.0, 1.0).cdf).statistic < 0.015
    # Without the MH step (the generator's own samples) the same test fails: the rule is what moves them.
    assert stats.kstest(proposals[:, 0], stats.norm(1.0, 1.0).cdf).statistic > 0.1
    # An inverted rule (favouring low D) drifts away from the target.
    state, _ = run_chains(-perfect_logit(start), -perfect_logit(proposals), rng.random((n, k)))
    wrong = np.where(state >= 0, proposals[np.arange(n), np.maximum(state, 0)], start)
    assert stats.kstest(wrong, stats.norm(1.0, 1.0).cdf).statistic > 0.1


def test_chain_started_at_target_samples_stays_at_the_target():
    """MH-GAN starts chains at real rows: the target is then stationary from the first step."""
    from scipy import stats

    rng = np.random.default_rng(1)
    n, k = 20000, 3
    start = rng.normal(1.0, 1.0, n)
    proposals = rng.normal(0.0, 2.0, (n, k))
    state, _ = run_chains(perfect_logit(start), perfect_logit(proposals), rng.random((n, k)))
    final = np.where(state >= 0, proposals[np.arange(n), np.maximum(state, 0)], start)
    assert stats.kstest(final, stats.norm(1.0, 1.0).cdf).statistic < 0.015


def few_shot_rows(per_class=10, seed=0):
    import datasets

    rng = np.random.default_rng(seed)
    rows = []
    for label, centre in (("a", (0.0, 0.0)), ("b", (4.0, 4.0))):
        for _ in range(per_class):
            rows.append({"x": float(rng.normal(centre[0])), "y": float(rng.normal(centre[1])),
                         "count": int(rng.integers(0, 5)), "note": "real", "label": label})
    return datasets.Dataset.from_list(rows)


def test_synthetic_rows_are_marked_labelled_and_follow_the_real_rows():
    data = few_shot_rows()
    opts = {**FAST, "gan_augment_steps": 300, "gan_augment_hidden": 32}  # trained enough to tell the classes apart
    out, report = augment(data, GanAugmentOptions(gan_augment_ratio=1.5, **opts))
    real, synthetic = out.filter(lambda r: not r["synthetic"]), out.filter(lambda r: r["synthetic"])
    assert real.remove_columns("synthetic").to_list() == data.to_list()  # real rows unchanged, first, in order
    assert len(synthetic) == report["synthetic_rows"] == 30
    assert sorted(set(synthetic["label"])) == ["a", "b"] and synthetic["label"].count("a") == 15
    assert all(isinstance(v, int) for v in synthetic["count"])  # integer columns stay integers
    assert set(synthetic["note"]) == {None}  # non-feature columns are not invented
    assert report["feature_columns"] == ["x", "y", "count"] and report["mh_proposals"] > 0
    # Conditioning: each class's synthetic rows sit nearer its own real rows than the other class's.
    for label in ("a", "b"):
        mine = np.array([[r["x"], r["y"]] for r in synthetic if r["label"] == label]).mean(0)
        centres = {c: np.array([[r["x"], r["y"]] for r in data if r["label"] == c]).mean(0) for c in ("a", "b")}
        other = "b" if label == "a" else "a"
        assert np.linalg.norm(mine - centres[label]) < np.linalg.norm(mine - centres[other])


def test_same_seed_same_rows_other_seed_other_rows():
    data = few_shot_rows()
    first, _ = augment(data, GanAugmentOptions(**FAST))
    again, _ = augment(data, GanAugmentOptions(**FAST))
    other, _ = augment(data, GanAugmentOptions(gan_augment_seed=1, **FAST))
    assert first.to_list() == again.to_list()
    assert first.to_list() != other.to_list()


def test_plain_sampler_skips_mh():
    _, report = augment(few_shot_rows(), GanAugmentOptions(gan_augment_sampler="plain", **FAST))
    assert report["mh_proposals"] == 0 and report["synthetic_rows"] == 20


def make_run(tmp_path, **options):
    from transformers import TrainingArguments

    from ftplugins.context import Run
    from ftplugins.options import build_options

    return Run(plugins=[plugin], options=build_options([plugin], {**FAST, **options}),
               args=cpu_args(TrainingArguments, tmp_path))


def test_plugin_augments_the_train_split_only(tmp_path):
    run = make_run(tmp_path)
    train, evaluation = few_shot_rows(), few_shot_rows(seed=5)
    augmented = run.call("transform_dataset", dataset=train, split="train")
    assert len(augmented) == 40 and sum(augmented["synthetic"]) == 20
    assert run.call("transform_dataset", dataset=evaluation, split="eval") is evaluation  # untouched
    report = json.loads((tmp_path / "gan_augment_report.json").read_text())
    assert report["synthetic_rows"] == 20
    assert not any(name.startswith(".ftplugins-staging") for name in os.listdir(tmp_path))
    # Marked synthetic rows never reach an evaluation split.
    with pytest.raises(FtpluginsError, match="'eval' split has rows marked synthetic"):
        run.call("transform_dataset", dataset=augmented, split="eval")


def test_cli_writes_rows_and_report(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="ftplugins")  # the plugin's own sub-command (its entry point may not be
    plugin.add_commands(parser.add_subparsers(dest="command"))  # installed in the test environment yet)
    few_shot_rows().to_csv(str(tmp_path / "rows.csv"))
    out = tmp_path / "aug" / "augmented.jsonl"
    args = parser.parse_args(["augment", "gan", "--data", str(tmp_path / "rows.csv"), "-o", str(out),
                                      "--steps", "60", "--hidden", "16", "--ratio", "0.5"])
    args.func(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and sum(r["synthetic"] for r in rows) == 10
    assert json.loads((tmp_path / "aug" / "augmented.report.json").read_text())["synthetic_rows"] == 10
    assert sorted(os.listdir(tmp_path / "aug")) == ["augmented.jsonl", "augmented.report.json"]
    assert "20 real + 10 synthetic rows" in capsys.readouterr().out


@pytest.mark.parametrize(("options", "message"), [
    ({"gan_augment_label_column": "klass"}, "no label column 'klass'"),
    ({"gan_augment_feature_columns": "x,note"}, "'note' is Value"),
    ({"gan_augment_feature_columns": "x,z"}, "'z' is not a column"),
])
def test_bad_columns_are_one_line(options, message):
    with pytest.raises(DatasetColumnsError, match=message) as info:
        augment(few_shot_rows(), GanAugmentOptions(**FAST, **options))
    assert "\n" not in str(info.value)


def test_already_augmented_and_non_finite_rows_are_refused():
    data, _ = augment(few_shot_rows(), GanAugmentOptions(**FAST))
    with pytest.raises(DatasetColumnsError, match="already has the marker column 'synthetic'"):
        augment(data, GanAugmentOptions(**FAST))
    bad = few_shot_rows().map(lambda r, i: {"x": float("nan") if i == 3 else r["x"]}, with_indices=True)
    with pytest.raises(FtpluginsError, match="non-finite values"):
        augment(bad, GanAugmentOptions(**FAST))


@pytest.mark.parametrize(("options", "message"), [
    ({"gan_augment_sampler": "gibbs"}, "gan_augment_sampler 'gibbs': expected one of mh, plain"),
    ({"gan_augment_ratio": -1.0}, "gan_augment_ratio"),
    ({"gan_augment_discriminators": 0}, "gan_augment_discriminators"),
    ({"gan_augment_marker_column": "label"}, "it is the label column"),
])
def test_bad_options_raise_option_error(options, message):
    from ftplugins.options import build_options

    with pytest.raises(OptionError, match=message):
        build_options([plugin], options)


class TabularClassifier:
    """A logistic-regression model over the x, y columns, for transformers.Trainer (built lazily: torch import)."""

    @staticmethod
    def build():
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)
                self.seen_rows = 0

            def forward(self, x, y, labels):
                self.seen_rows += len(labels)
                logits = self.linear(torch.stack([x, y], dim=1).float())
                return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

        return Model()


def test_trains_through_compose_on_the_augmented_rows_and_refuses_trl(tmp_path):
    from transformers import Trainer, TrainingArguments

    import ftplugins

    data = few_shot_rows().map(lambda r: {"labels": int(r["label"] == "b")}).select_columns(["x", "y", "labels"])
    cls = ftplugins.compose(Trainer, [plugin], **FAST, gan_augment_label_column="labels")
    model = TabularClassifier.build()
    args = cpu_args(TrainingArguments, tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4)
    trainer = cls(model=model, args=args, train_dataset=data, eval_dataset=data)
    assert len(trainer.train_dataset) == 40 and len(trainer.eval_dataset) == 20  # eval stays real
    trainer.train()
    assert model.seen_rows == 40  # one epoch over real + synthetic rows
    from trl import SFTConfig, SFTTrainer

    with pytest.raises(FtpluginsError, match="gan_augment augments numeric tabular rows .* not SFTTrainer"):
        ftplugins.compose(SFTTrainer, [plugin])(model=str(tmp_path / "never-loaded"),
                                                args=cpu_args(SFTConfig, tmp_path), train_dataset=data)


def test_a_crash_while_writing_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    from ftplugins.methods.gan_augment import report as report_module

    data, report = augment(few_shot_rows(), GanAugmentOptions(**FAST))
    out = tmp_path / "augmented.jsonl"
    report_module.write_rows_and_report(data, report, str(out))
    before = out.read_text(), (tmp_path / "augmented.report.json").read_text()

    def broken_dump(obj, handle, **kwargs):
        handle.write('{"half": ')
        raise OSError("disk full")

    monkeypatch.setattr(report_module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        report_module.write_rows_and_report(data.select(range(3)), report, str(out))
    assert (out.read_text(), (tmp_path / "augmented.report.json").read_text()) == before
    assert sorted(os.listdir(tmp_path)) == ["augmented.jsonl", "augmented.report.json"]


def bars(per_class=12, side=6, seed=0):
    """Grey 6x6 images: class 'top' is bright in its top half, 'bottom' in its bottom half (plus noise)."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in ("top", "bottom"):
        for _ in range(per_class):
            image = 0.1 + 0.05 * rng.standard_normal((side, side))
            rows = slice(0, side // 2) if label == "top" else slice(side // 2, side)
            image[rows] += 0.8
            images.append(np.clip(image, 0, 1).tolist())
            labels.append(label)
    return datasets.Dataset.from_dict({"image": images, "label": labels})


def test_small_images_get_class_conditional_synthetic_images_of_the_same_shape():
    data = bars()
    out, report = augment(data, GanAugmentOptions(gan_augment_image_column="image", gan_augment_steps=300,
                                                  gan_augment_hidden=32, gan_augment_chain_length=5))
    synthetic = out.filter(lambda r: r["synthetic"])
    assert len(synthetic) == len(data) and report["image_shape"] == [6, 6]
    images = np.asarray(synthetic["image"])
    assert images.shape == (24, 6, 6) and images.min() >= 0.0 and images.max() <= 1.0
    real = np.asarray(data["image"])
    assert not any(np.array_equal(s, r) for s in images for r in real)  # generated, not copied
    labels = np.asarray(synthetic["label"])
    for label, bright in (("top", slice(0, 3)), ("bottom", slice(3, 6))):  # each class's bright half
        mine = images[labels == label]
        dark = slice(3, 6) if bright == slice(0, 3) else slice(0, 3)
        assert len(mine) == 12 and mine[:, bright].mean() > mine[:, dark].mean() + 0.3, label


def test_an_image_column_of_mixed_shapes_or_with_feature_columns_is_refused():
    import datasets

    from ftplugins.options import build_options

    mixed = datasets.Dataset.from_dict({"image": [[[0.0, 1.0]], [[0.0], [1.0]]], "label": [0, 1]})
    with pytest.raises(FtpluginsError, match="differ in shape"):
        augment(mixed, GanAugmentOptions(gan_augment_image_column="image", **FAST))
    with pytest.raises(OptionError, match="give one of them"):
        build_options([plugin], {"gan_augment_image_column": "image", "gan_augment_feature_columns": "x"})


def write_bars_folder(folder, per_class=12, mode="L"):
    """``bars()`` as an image folder: FOLDER/<class>/<n>.png, 8-bit."""
    from PIL import Image

    data = bars(per_class)
    for i, row in enumerate(data):
        os.makedirs(folder / row["label"], exist_ok=True)
        pixels = np.rint(np.asarray(row["image"]) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert(mode).save(folder / row["label"] / f"{i:02d}.png")
    return data


def augment_cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="ftplugins")
    plugin.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["augment", "gan", *argv])
    args.func(args)


def test_cli_augments_an_image_folder_into_an_image_folder(tmp_path, capsys):
    from PIL import Image

    write_bars_folder(tmp_path / "real")
    out = tmp_path / "aug"
    augment_cli(["--images", str(tmp_path / "real"), "-o", str(out), "--steps", "300", "--hidden", "32",
                 "--chain_length", "5", "--ratio", "0.5"])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    real, synthetic = [r for r in rows if not r["synthetic"]], [r for r in rows if r["synthetic"]]
    assert len(real) == 24 and len(synthetic) == 12
    for r in real:  # real images copied byte for byte, under their own names
        assert (out / r["file_name"]).read_bytes() == (tmp_path / "real" / r["file_name"]).read_bytes()
    assert sorted(os.listdir(out)) == ["bottom", "gan_augment_report.json", "metadata.jsonl", "top"]
    for label, bright, dark in (("top", slice(0, 3), slice(3, 6)), ("bottom", slice(3, 6), slice(0, 3))):
        mine = [r for r in synthetic if r["label"] == label]
        assert len(mine) == 6 and all(r["file_name"].startswith(f"{label}/gan-synthetic-") for r in mine)
        images = []
        for r in mine:
            with Image.open(out / r["file_name"]) as image:
                assert image.mode == "L" and image.size == (6, 6)
                images.append(np.asarray(image, dtype=np.float64))
        images = np.stack(images)
        assert images[:, bright].mean() > images[:, dark].mean() + 60, label  # class-conditional (0-255 scale)
    report = json.loads((out / "gan_augment_report.json").read_text())
    assert report["synthetic_rows"] == 12 and report["image_shape"] == [6, 6]
    assert "24 real + 12 synthetic images" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / ".ftplugins-staging")


def test_cli_image_folder_errors_are_one_line(tmp_path):
    write_bars_folder(tmp_path / "real", per_class=2)
    with pytest.raises(FtpluginsError, match="overlaps the input folder"):
        augment_cli(["--images", str(tmp_path / "real"), "-o", str(tmp_path / "real" / "aug")])
    (tmp_path / "flat").mkdir()
    with pytest.raises(FtpluginsError, match="no images found; expected one subfolder per class"):
        augment_cli(["--images", str(tmp_path / "flat"), "-o", str(tmp_path / "aug")])
    write_bars_folder(tmp_path / "mixed", per_class=2)
    from PIL import Image

    Image.new("RGB", (6, 6)).save(tmp_path / "mixed" / "top" / "rgb.png")
    with pytest.raises(FtpluginsError, match="differ in shape"):
        augment_cli(["--images", str(tmp_path / "mixed"), "-o", str(tmp_path / "aug"), "--steps", "5"])
    assert not os.path.exists(tmp_path / "aug")
