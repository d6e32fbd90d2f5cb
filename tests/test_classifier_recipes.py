"""The classifier recipes: one plain ``transformers.Trainer`` script (recipes/classifiers/minilm_classifier.py) on
the real MiniLM encoder, each method switched on by ``ftplugins.run --plugins NAME`` as a user runs it, and each
run's saved output showing the method's own effect (a plain run of the script shows none of them)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from ftplugins.run import run_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "recipes", "classifiers", "minilm_classifier.py")
DATA = os.path.join(REPO, "recipes", "data")
VERBALIZER = ["--pet_verbalizer", "pos:great", "neg:terrible"]


def run(plugins: list[str], data: str, output_dir, *script_args: str) -> str:
    run_script([*plugins, "--", SCRIPT, "--data", os.path.join(DATA, data), "--output_dir", str(output_dir),
                "--use_cpu", *script_args])
    return str(output_dir)


def pretrained_encoder() -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    from ftplugins.testing import minilm_path

    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2)
    return {k: v for k, v in model.state_dict().items() if k.startswith("bert.")}


def test_mean_teacher_recipe_keeps_an_ema_teacher_and_class_prototypes(tmp_path):
    out = run(["--plugins", "mean_teacher", "--mean_teacher_alpha", "0.5"], "reviews_stream.jsonl", tmp_path,
              "--max_steps", "1", "--save_steps", "1", "--batch_size", "24")
    checkpoint = os.path.join(out, "checkpoint-1")
    teacher = load_file(os.path.join(checkpoint, "mean_teacher.safetensors"))
    student = load_file(os.path.join(checkpoint, "model.safetensors"))
    initial = pretrained_encoder()
    moved = 0
    for name, value in initial.items():  # one step with α = 0.5: teacher = (initial + student) / 2
        assert torch.allclose(teacher[name], 0.5 * value + 0.5 * student[name], atol=1e-6), name
        moved += not torch.allclose(student[name], value)
    assert moved  # the student trained, so the teacher is neither of them
    prototypes = load_file(os.path.join(checkpoint, "mean_teacher_prototypes.safetensors"))
    assert prototypes["seen"].bool().all() and prototypes["vectors"].shape == (2, 384)


@pytest.fixture(scope="module")
def pet_run(tmp_path_factory):
    return run(["--plugins", "pet", *VERBALIZER], "reviews_words.jsonl", tmp_path_factory.mktemp("pet"),
               "--head", "masked_lm", "--max_steps", "2")


def test_pet_recipe_trains_a_lora_adapter_and_the_verbaliser_head_only(pet_run):
    adapter = load_file(os.path.join(pet_run, "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)  # the PLM itself is not in the output
    assert any(v.abs().sum() > 0 for n, v in adapter.items() if "lora_B" in n)  # B starts at 0: it trained
    head = load_file(os.path.join(pet_run, "pet_head.safetensors"))
    assert head["bias"].shape == (2,)  # one score per verbaliser token, not the whole vocabulary


def test_list_selftrain_recipe_self_trains_the_pet_teacher_on_the_unlabelled_rows(tmp_path, pet_run):
    out = run(["--plugins", "list_selftrain,pet", *VERBALIZER, "--list_selftrain_sessions", "1",
               "--list_selftrain_steps", "2", "--list_selftrain_batch_size", "4", "--list_selftrain_labelled_steps",
               "1", "--list_selftrain_lr", "1e-3"], "reviews_words_stream.jsonl", tmp_path,
              "--head", "masked_lm", "--max_steps", "2")
    # Same labelled rows, seed and steps as the pet run: its teacher equals pet's model; the sessions on the 8
    # unlabelled rows then move the adapter and head away from it.
    for name in ("adapter_model.safetensors", "pet_head.safetensors"):
        selftrained, teacher = load_file(os.path.join(out, name)), load_file(os.path.join(pet_run, name))
        assert set(selftrained) == set(teacher)
        assert any(not torch.allclose(selftrained[k], teacher[k]) for k in teacher), name


def test_levi_recipe_freezes_the_encoder_and_trains_the_small_model_and_heads(tmp_path):
    out = run(["--plugins", "levi"], "reviews.jsonl", tmp_path, "--max_steps", "2")
    saved = load_file(os.path.join(out, "model.safetensors"))
    initial = pretrained_encoder()
    for name, value in initial.items():
        assert torch.equal(saved[f"pretrained.{name}"], value), name
    assert any(name.startswith("heads.") for name in saved) and any(name.startswith("small.") for name in saved)


def test_hyper_adapter_recipe_exports_one_generated_peft_adapter_per_task(tmp_path):
    from ftplugins.methods.hyper_adapter.export import load_task_model
    from ftplugins.testing import minilm_path

    out = run(["--plugins", "hyper_adapter", "--hyper_adapter_tasks", "sentiment:2", "topic:3"],
              "classifier_tasks.jsonl", tmp_path, "--max_steps", "2")
    adapters = {task: load_file(os.path.join(out, "task_adapters", task, "adapter_model.safetensors"))
                for task in ("sentiment", "topic")}
    shared = [n for n in adapters["topic"] if "bottleneck_adapter" in n]
    assert shared and any(not torch.equal(adapters["sentiment"][n], adapters["topic"][n]) for n in shared)
    model = load_task_model(os.path.join(out, "task_adapters", "topic"), base=str(minilm_path()))
    assert model.config.num_labels == 3


def test_samda_recipe_saves_the_fused_model_with_the_encoder_unchanged(tmp_path):
    """recipes/segmentation/tiny_segmentation.py under --plugins samda (a tiny SAM from a config, 2 steps)."""
    from ftplugins.methods.samda.tiny import tiny_sam, tiny_segmentation_unet

    sam = tiny_sam()
    sam.save_pretrained(tmp_path / "sam")
    out = tmp_path / "out"
    run_script(["--plugins", "samda", "--samda_encoder", str(tmp_path / "sam"), "--",
                os.path.join(REPO, "recipes", "segmentation", "tiny_segmentation.py"), "--output_dir", str(out),
                "--use_cpu", "--max_steps", "2"])
    saved = load_file(str(out / "model.safetensors"))
    encoder = {f"encoder.{k}": v for k, v in sam.vision_encoder.state_dict().items()}
    assert encoder and all(torch.equal(saved[k], v) for k, v in encoder.items())  # frozen: as built
    expert = tiny_segmentation_unet(num_classes=2, in_channels=1, size=32, seed=0).state_dict()
    assert {k for k in saved if k.startswith("expert.")} == {f"expert.{k}" for k in expert}
    assert any(not torch.equal(saved[f"expert.{k}"], v) for k, v in expert.items())  # the expert trained
    adapter = {k: v for k, v in saved.items() if k.startswith("adapter.")}
    assert adapter and any(v.abs().sum() > 0 for v in adapter.values())  # fusion present (its last conv left zero)


def test_gan_augment_recipe_marks_synthetic_rows_in_the_train_split_and_none_in_eval(tmp_path):
    """recipes/classifiers/tabular_classifier.py under --plugins gan_augment (a small GAN, 2 training steps)."""
    import json

    from datasets import load_dataset

    run_script(["--plugins", "gan_augment", "--gan_augment_steps", "60", "--gan_augment_hidden", "16",
                "--gan_augment_chain_length", "5", "--",
                os.path.join(REPO, "recipes", "classifiers", "tabular_classifier.py"), "--data",
                os.path.join(DATA, "tabular_fewshot.jsonl"), "--output_dir", str(tmp_path), "--use_cpu",
                "--max_steps", "2"])
    rows = load_dataset("json", data_files=os.path.join(DATA, "tabular_fewshot.jsonl"),
                        split="train").train_test_split(test_size=0.25, seed=0)
    train = [json.loads(line) for line in (tmp_path / "train_rows.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (tmp_path / "eval_rows.jsonl").read_text().splitlines()]
    real = [{k: v for k, v in r.items() if k != "synthetic"} for r in train if not r["synthetic"]]
    synthetic = [r for r in train if r["synthetic"]]
    assert real == list(rows["train"]) and len(synthetic) == len(real)  # ratio 1: each class doubled
    assert {r["label"] for r in synthetic} == {0, 1} and all(r not in real for r in synthetic)
    assert held_out == list(rows["test"]) and not any(r.get("synthetic") for r in held_out)
    report = json.loads((tmp_path / "gan_augment_report.json").read_text())
    assert report["synthetic_rows"] == len(synthetic) and "eval_loss" in json.loads(
        (tmp_path / "eval_results.json").read_text())
    assert (tmp_path / "model.safetensors").is_file()
