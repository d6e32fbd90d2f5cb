"""`python -m ftplugins.train diffusion`: a diffusers pipeline folder + an image folder in, the run saved in the layouts
diffusers loads (a whole pipeline, a LoRA for `pipe.load_lora_weights`, our adapters for `ftplugins.load_adapter`);
`ftplugins tiny-model --kind diffusion`; one line for each kind of bad input."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

import ftplugins  # noqa: E402
from ftplugins.diffusion import tiny  # noqa: E402
from ftplugins.errors import FtpluginsError, ModelPathError, OptionError, UnsupportedModelError  # noqa: E402
from ftplugins.train import train  # noqa: E402


def run_args(model, data, out, *extra):
    return ["diffusion", "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--use_cpu", "true",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", *extra]


def generate(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe("a red disc", num_inference_steps=4, guidance_scale=0.0, height=tiny.RESOLUTION,
                    width=tiny.RESOLUTION, generator=torch.Generator().manual_seed(seed), output_type="pt").images


def pipeline(path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(path))


@pytest.fixture(scope="module")
def shapes(diffusion_data_dir):
    return os.path.join(diffusion_data_dir, "shapes")


# --- ftplugins tiny-model --kind diffusion ------------------------------------------------------------------------


def test_tiny_model_command_writes_a_pipeline_that_generates(tmp_path, capsys):
    from ftplugins.cli import main

    main(["tiny-model", "--kind", "diffusion", str(tmp_path / "pipe")])
    main(["tiny-data", "--kind", "diffusion", str(tmp_path / "data")])
    assert "saved a tiny random" in capsys.readouterr().out
    pipe = pipeline(tmp_path / "pipe")
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.scheduler.config.timestep_spacing == "trailing"
    images = generate(pipe)
    assert images.shape == (1, 3, tiny.RESOLUTION, tiny.RESOLUTION) and torch.isfinite(images).all()
    rows = [json.loads(line) for line in open(tmp_path / "data" / "shapes" / "train" / "metadata.jsonl")]
    assert len(rows) == 32 and all(os.path.isfile(tmp_path / "data" / "shapes" / "train" / r["file_name"])
                                   for r in rows)
    bob_rows = [json.loads(line) for line in open(tmp_path / "data" / "backgrounds" / "train" / "metadata.jsonl")]
    assert {r["label"] for r in bob_rows} == set(tiny.BACKGROUND_CLASSES) and len({r["background"] for r in bob_rows}) > 1


def test_help_lists_the_diffusion_arguments_and_the_plugins_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train(["diffusion", "--help", "--plugins", "ssf"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--dataset_name", "--use_peft", "--resolution", "--cache_latents",
                                         "--ssf_target_modules"))


# --- what a run saves ---------------------------------------------------------------------------------------------


def test_full_fine_tuning_saves_a_pipeline_with_the_trained_denoiser(tiny_diffusion_dir, shapes, tmp_path):
    from ftplugins.run_output import check_manifest

    out = tmp_path / "full"
    train(run_args(tiny_diffusion_dir, shapes, out, "--cache_latents", "true"))
    source, saved = pipeline(tiny_diffusion_dir), pipeline(out)
    moved = [k for k, v in saved.unet.state_dict().items() if not torch.equal(v, source.unet.state_dict()[k])]
    assert moved  # the denoiser trained ...
    for name in ("text_encoder", "vae"):  # ... and nothing else did
        for key, value in getattr(saved, name).state_dict().items():
            assert torch.equal(value, getattr(source, name).state_dict()[key]), (name, key)
    assert type(saved.scheduler).__name__ == "EulerDiscreteScheduler"  # the pipeline's own sampler, not DDPM
    assert not torch.allclose(generate(saved), generate(source))
    manifest = json.loads((out / "ftplugins_run.json").read_text())
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["artifacts"] and not check_manifest(str(out))


def test_use_peft_saves_a_lora_that_pipelines_load(tiny_diffusion_dir, shapes, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    train(run_args(tiny_diffusion_dir, shapes, out, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"))
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "adapter_config.json").is_file()
    base = pipeline(tiny_diffusion_dir)
    expected = pipeline(tiny_diffusion_dir)
    expected.unet = PeftModel.from_pretrained(expected.unet, str(out)).eval()  # PEFT's own files: the trained LoRA
    loaded = pipeline(tiny_diffusion_dir)
    loaded.load_lora_weights(str(out))  # diffusers' loader, alpha / r = 2 from the saved metadata
    images = generate(loaded)
    torch.testing.assert_close(images, generate(expected), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(images, generate(base))


def test_an_adapter_plugin_saves_an_adapter_that_load_adapter_reads(tiny_diffusion_dir, shapes, tmp_path):
    out = tmp_path / "ssf"
    train(run_args(tiny_diffusion_dir, shapes, out, "--plugins", "ssf",
                   "--ssf_target_modules", "to_q", "to_k", "to_v", "to_out.0"))
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "SSF"
    base, adapted = pipeline(tiny_diffusion_dir), pipeline(tiny_diffusion_dir)
    adapted.unet = ftplugins.load_adapter(adapted.unet, str(out)).eval()
    assert not torch.allclose(generate(adapted), generate(base))


def test_a_soup_of_a_diffusion_run_is_the_mean_denoiser_that_its_class_loads(tiny_diffusion_dir, shapes, tmp_path,
                                                                               monkeypatch):
    """`soup` under a DiffusionTrainer: the checkpoints hold the denoiser as diffusers saves it; the uniform soup is
    their exact mean, in a folder `UNet2DConditionModel.from_pretrained` loads; greedy scores each candidate with the
    user's evaluator on the denoiser loaded by its own class (a text held-out set is refused by name)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    def soup_run(out, *extra):
        train(run_args(tiny_diffusion_dir, shapes, out, "--save_strategy", "steps", "--save_steps", "1",
                       "--plugins", "soup", "--soup_last_k", "2", *extra))
        return out / "soup"

    weights = "diffusion_pytorch_model.safetensors"
    made = soup_run(tmp_path / "uniform")
    two, three = (load_file(tmp_path / "uniform" / f"checkpoint-{n}" / weights) for n in (2, 3))
    souped = load_file(made / weights)
    assert set(souped) == set(two) and any(not torch.equal(two[k], three[k]) for k in two)
    for key, value in souped.items():
        torch.testing.assert_close(value, ((two[key].double() + three[key].double()) / 2).float(), rtol=0, atol=0)
    loaded = UNet2DConditionModel.from_pretrained(str(made))
    assert torch.equal(loaded.state_dict()["conv_in.weight"], souped["conv_in.weight"])
    assert not (made / "ftplugins_checkpoint.json").exists()  # a soup is not a checkpoint

    module = tmp_path / "denoiser_score.py"  # prefers checkpoint-2's conv_in: greedy keeps it alone
    module.write_text("import torch\nfrom safetensors.torch import load_file\n"
                      f"TARGET = load_file({str(tmp_path / 'uniform' / 'checkpoint-2' / weights)!r})['conv_in.weight']\n"
                      "def score(denoiser, tokenizer):\n"
                      "    assert type(denoiser).__name__ == 'UNet2DConditionModel'\n"
                      "    return -float((denoiser.conv_in.weight.detach() - TARGET).abs().sum())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    greedy = soup_run(tmp_path / "greedy", "--soup_method", "greedy", "--soup_evaluator", "denoiser_score:score")
    report = json.loads((greedy / "soup.json").read_text())
    assert [os.path.basename(p) for p in report["chosen"]] == ["checkpoint-2"]
    assert torch.equal(load_file(greedy / weights)["conv_in.weight"], two["conv_in.weight"])

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"text": "a red disc"}\n')
    with pytest.raises(FtpluginsError, match="soup_heldout scores a language model's held-out text"):
        soup_run(tmp_path / "refused", "--soup_method", "greedy", "--soup_heldout", str(heldout))


def test_use_peft_beside_an_adapter_plugin_is_refused(tiny_diffusion_dir, shapes, tmp_path):
    with pytest.raises(FtpluginsError, match="one adapter per run: drop --use_peft or the adapter plugin"):
        train(run_args(tiny_diffusion_dir, shapes, tmp_path / "o", "--use_peft", "true", "--plugins", "ssf"))


def test_a_saved_datasets_dataset_trains_too(tiny_diffusion_dir, tmp_path):
    tiny.shapes_dataset(8).save_to_disk(str(tmp_path / "saved"))
    train(run_args(tiny_diffusion_dir, tmp_path / "saved", tmp_path / "o", "--dataset_train_split", "train"))
    assert (tmp_path / "o" / "model_index.json").is_file()


def test_llm_only_plugins_are_refused_by_name(tiny_diffusion_dir, shapes, tmp_path):
    with pytest.raises(FtpluginsError, match="plugin masked_thought applies to SFTTrainer, not to DiffusionTrainer"):
        train(run_args(tiny_diffusion_dir, shapes, tmp_path / "o", "--plugins", "masked_thought"))


def restricted_plugins() -> list[str]:
    """Installed plugins that name trainers other than DiffusionTrainer (one that cannot be imported, e.g. an entry
    point of a newer checkout, is left to `ftplugins list` and the listing tests)."""
    from ftplugins.registry import installed_names, load

    names = []
    for name in installed_names():
        try:
            trainers = load(name).trainers
        except ImportError:
            continue
        if trainers and "DiffusionTrainer" not in trainers:
            names.append(name)
    return names


@pytest.mark.parametrize("name", restricted_plugins())
def test_every_plugin_for_other_trainers_is_refused_on_diffusion_by_name(tmp_path, name):
    """Plugins for text or encoder models (SFT-only, GRPO-only, `Trainer` classifiers, text selection and evaluation)
    are refused by name on a DiffusionTrainer, although it is a transformers Trainer too."""
    from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer
    from ftplugins.registry import load

    assert {"masked_thought", "many_icl", "s3ft", "levi", "pet", "mbpp_eval", "select_kmeans"} <= set(
        restricted_plugins())
    trainer_cls = ftplugins.compose(DiffusionTrainer, [name])
    args = DiffusionConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no")
    allowed = ", ".join(load(name).trainers)
    with pytest.raises(FtpluginsError, match=rf"plugin {name} applies to {allowed}, not to DiffusionTrainer"):
        trainer_cls(model=tiny.tiny_unet(), args=args, train_dataset=tiny.shapes_dataset(2),
                    text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(), noise_scheduler=tiny.ddpm_scheduler(),
                    processing_class=tiny.tiny_tokenizer())


# --- bad input: one line each ---------------------------------------------------------------------------------------


def copy_folder(shapes, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(os.path.join(shapes, "train"), folder)
    return folder


def rewrite_metadata(folder, change):
    rows = [json.loads(line) for line in open(folder / "metadata.jsonl")]
    rows = change(rows)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


BAD_FOLDERS = {
    "missing image": (lambda f: os.remove(f / "0003.png"),
                      r"metadata.jsonl line 4: the image '0003.png' does not exist"),
    "unreadable image": (lambda f: (f / "0002.png").write_bytes(b"not a png"),
                         r"image '.*0002.png' cannot be read .*; fix it, or remove it and its line"),
    "missing caption": (lambda f: rewrite_metadata(f, lambda rows: [{"file_name": rows[0]["file_name"]}, *rows[1:]]),
                        r"line 1: no caption in column 'caption' for '0000.png'"),
    "image without a line": (lambda f: rewrite_metadata(f, lambda rows: rows[1:]),
                             r"1 image\(s\) of .* have no line in a metadata file, e.g. '.*0000.png'"),
    "no metadata": (lambda f: os.remove(f / "metadata.jsonl"), r"has no metadata.jsonl: every image needs a caption"),
    "broken metadata": (lambda f: (f / "metadata.jsonl").write_text('{"file_name": "0000.png", "caption"\n'),
                        r"metadata.jsonl line 1: not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_a_bad_image_folder_is_one_line(tiny_diffusion_dir, shapes, tmp_path, case):
    folder = copy_folder(shapes, tmp_path)
    spoil, message = BAD_FOLDERS[case]
    spoil(folder)
    with pytest.raises(FtpluginsError, match=message):
        train(run_args(tiny_diffusion_dir, folder, tmp_path / "o"))
    assert not (tmp_path / "o" / "ftplugins_run.json").exists()


def test_another_caption_column_is_named_and_then_works(tiny_diffusion_dir, shapes, tmp_path):
    folder = copy_folder(shapes, tmp_path)
    rewrite_metadata(folder, lambda rows: [{"file_name": r["file_name"], "text": r["caption"]} for r in rows])
    with pytest.raises(FtpluginsError, match="no caption in column 'caption'.*set --caption_column"):
        train(run_args(tiny_diffusion_dir, folder, tmp_path / "o"))
    train(run_args(tiny_diffusion_dir, folder, tmp_path / "o", "--caption_column", "text", "--max_steps", "1"))
    assert (tmp_path / "o" / "model_index.json").is_file()


def test_a_resolution_the_model_cannot_take_is_refused(tiny_diffusion_dir, shapes, tmp_path):
    # The tiny VAE halves, the UNet halves once more: 4 px multiples.
    with pytest.raises(OptionError, match="--resolution 18 does not fit .* need a multiple of 4 px.*--resolution 16"):
        train(run_args(tiny_diffusion_dir, shapes, tmp_path / "o", "--resolution", "18"))


def test_a_model_that_is_not_a_pipeline_is_refused(tiny_model_dir, tiny_diffusion_dir, shapes, tmp_path):
    with pytest.raises(ModelPathError, match="holds one model \\(LlamaForCausalLM\\), not a diffusers pipeline"):
        train(run_args(tiny_model_dir, shapes, tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPathError, match="without model_index.json; point to a saved model \\(a diffusers pipeline"):
        train(run_args(tmp_path / "empty", shapes, tmp_path / "o"))
    with pytest.raises(ModelPathError, match="holds one model \\(UNet2DConditionModel\\), not a diffusers pipeline"):
        train(run_args(os.path.join(tiny_diffusion_dir, "unet"), shapes, tmp_path / "o"))
    no_denoiser = tmp_path / "no-denoiser"
    shutil.copytree(tiny_diffusion_dir, no_denoiser)
    index = json.loads((no_denoiser / "model_index.json").read_text())
    index.pop("unet")
    (no_denoiser / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match=r"StableDiffusionPipeline: .*\) has no denoiser \(unet or transformer\); a text-to-image"):
        train(run_args(no_denoiser, shapes, tmp_path / "o"))
    with pytest.raises(ModelPathError, match="HF_HUB_OFFLINE=1 forbids downloading it"):
        train(run_args("someone/not-cached-pipeline", shapes, tmp_path / "o"))


# --- ftplugins.run and accelerate launch ----------------------------------------------------------------------------

WRAPPED_SCRIPT = '''
import sys

from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny  # first imported inside ftplugins.run

args = DiffusionConfig(output_dir=sys.argv[1], use_cpu=True, max_steps=2, per_device_train_batch_size=2,
                       report_to="none", save_strategy="no", disable_tqdm=True, learning_rate=1e-2)
trainer = DiffusionTrainer(model=tiny.tiny_unet(), args=args, train_dataset=tiny.shapes_dataset(4),
                           text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                           noise_scheduler=tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())
trainer.train()
trainer.save_model()
composed = [c.__name__ for c in type(trainer).__mro__ if "_ftplugins_template" in vars(c)]
print("COMPOSED", ",".join(composed))
'''


@pytest.mark.slow
def test_ftplugins_run_patches_a_diffusion_trainer_the_script_imports(tmp_path):
    """The script imports ftplugins.diffusion only once it runs (deferred patching): its DiffusionTrainer is composed
    once, over transformers' own Trainer, and the plugin trains."""
    import subprocess
    import sys

    script = tmp_path / "train_t2i.py"
    script.write_text(WRAPPED_SCRIPT)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ftplugins.run", "--plugins", "ssf", "--ssf_target_modules", "to_q",
                           "to_k", "to_v", "to_out.0", "--", str(script), str(out)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "COMPOSED DiffusionTrainerWithSsf\n" in done.stdout
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "SSF"
    assert json.loads((out / "ftplugins_run.json").read_text())["plugins"] == ["ssf"]


def test_info_lists_the_diffusion_trainer_among_the_patched_classes():
    from ftplugins.patching import patched_names
    from ftplugins.registry import load

    assert "ftplugins.diffusion.DiffusionTrainer" in patched_names(load("ssf"))
    assert patched_names(load("pso")) == ["ftplugins.diffusion.DiffusionTrainer"]
    assert "ftplugins.diffusion.DiffusionTrainer" not in patched_names(load("masked_thought"))


@pytest.mark.slow
def test_accelerate_launch_of_the_diffusion_cli_trains_on_two_processes(tiny_diffusion_dir, shapes, tmp_path):
    import subprocess

    from test_distributed import accelerate_bin, ddp_flags

    out = tmp_path / "ddp"
    command = [accelerate_bin(), "launch", *ddp_flags(), "-m", "ftplugins.train",
               *run_args(tiny_diffusion_dir, shapes, out, "--per_device_train_batch_size", "2", "--plugins", "ssf",
                         "--ssf_target_modules", "to_q", "to_k", "to_v", "to_out.0")]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "ftplugins_run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["plugins"] == ["ssf"] and manifest["global_step"] == 3
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter_model.safetensors"))
    # SSF starts at scale 1, shift 0: it trained under DDP
    assert adapter and any(not (torch.equal(v, torch.ones_like(v)) or torch.equal(v, torch.zeros_like(v)))
                           for v in adapter.values())
