"""`ftplugins check`: every shipped recipe passes offline, and each way a recipe can be wrong is one clear error,
found without loading a model."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from ftplugins.cli import main as cli_main
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.recipe_check import check_recipe, distributed_mode_of
from ftplugins.testing import write_builtin_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))
ACCELERATE = os.path.join(ROOT, "recipes", "accelerate")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out as the recipes expect after `ftplugins tiny-data runs/data` (the model is never read)."""
    root = tmp_path_factory.mktemp("recipes")
    write_builtin_datasets(str(root / "runs" / "data"))
    from ftplugins.diffusion.tiny import write_diffusion_datasets

    write_diffusion_datasets(str(root / "runs" / "data"))  # `ftplugins tiny-data --kind diffusion runs/data`
    shutil.copytree(os.path.join(ROOT, "recipes"), root / "recipes")
    shutil.copytree(os.path.join(ROOT, "ftplugins", "eval", "data"), root / "ftplugins" / "eval" / "data")  # the
    # evaluation recipes name the small sets shipped in the package, relative to the repository root
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


def test_every_recipe_checks_with_its_local_dataset(in_workdir):
    assert RECIPES
    for recipe in RECIPES:
        result = check_recipe(os.path.join("recipes", os.path.basename(recipe)))
        assert result.plugins or os.path.basename(recipe).startswith("lora_"), recipe  # the plain-LoRA baselines
        assert not result.notes, (recipe, result.notes)  # the dataset was local, so its columns were checked


def test_the_command_follows_the_plugins_trainer(in_workdir):
    result = check_recipe("recipes/cls_rl_grpo.yaml")
    assert result.command == "grpo" and result.checked_columns == ["label", "text"]
    assert check_recipe("recipes/lift_sft.yaml").command == "sft"
    assert check_recipe("recipes/pso_diffusion.yaml").command == "diffusion"  # pso trains DiffusionTrainer only
    assert check_recipe("recipes/lora_diffusion.yaml").command == "diffusion"  # no plugin: the file's name says
    with pytest.raises(FtpluginsError, match="cls_rl applies to GRPOTrainer"):
        check_recipe("recipes/cls_rl_grpo.yaml", command="sft")


def test_a_plugin_that_cannot_shard_is_refused_for_an_fsdp_config(in_workdir):
    fsdp = os.path.join(ACCELERATE, "fsdp2.yaml")
    assert distributed_mode_of(fsdp) == "fsdp"
    with pytest.raises(FtpluginsError, match=r"plugin lt_sft does not support fsdp training .*: "):
        check_recipe("recipes/lt_sft_sft.yaml", accelerate_config=fsdp)
    assert check_recipe("recipes/ssf_sft.yaml", accelerate_config=fsdp).mode == "fsdp"
    ddp = os.path.join(ACCELERATE, "ddp_cpu.yaml")
    assert check_recipe("recipes/lift_sft.yaml", accelerate_config=ddp).mode == "ddp"


def test_a_misspelt_key_and_a_bad_option_value_are_named(in_workdir):
    base = open("recipes/lift_sft.yaml").read()
    typo = write(in_workdir, "typo.yaml", base + "lift_rnak: 4\n")
    with pytest.raises(OptionError, match="lift_rnak"):
        check_recipe(typo)
    bad = write(in_workdir, "bad.yaml", base.replace("lift_rank: 8", "lift_rank: 0"))
    with pytest.raises(OptionError, match="lift_rank"):
        check_recipe(bad)
    unknown = write(in_workdir, "unknown.yaml", base.replace("plugins: [lift]", "plugins: [lfit]"))
    with pytest.raises(FtpluginsError, match="lfit"):
        check_recipe(unknown)


def test_a_column_a_plugin_reads_must_be_in_the_local_dataset(in_workdir):
    base = open("recipes/locft_sft.yaml").read()
    assert "locft_target_column" in base
    wrong = write(in_workdir, "wrong.yaml", base.replace("locft_target_column: answer", "locft_target_column: target"))
    with pytest.raises(DatasetColumnsError, match=r"plugin locft reads column\(s\) 'target'"):
        check_recipe(wrong)


def test_bob_needs_the_class_column_and_a_column_per_template_attribute(in_workdir):
    base = open("recipes/bob_diffusion.yaml").read()
    assert check_recipe("recipes/bob_diffusion.yaml").checked_columns == ["label", "background"]
    posed = write(in_workdir, "posed.yaml", base.replace('"{class}, {background}"', '"{class}, {background}, {pose}"'))
    with pytest.raises(DatasetColumnsError, match=r"plugin bob reads column\(s\) 'pose'"):
        check_recipe(posed)


def test_a_dataset_without_the_trainers_columns_is_refused_when_no_plugin_rewrites_rows(in_workdir):
    base = open("recipes/ssf_sft.yaml").read()
    wrong = write(in_workdir, "prefs.yaml", base.replace("runs/data/arithmetic", "runs/data/preference"))
    with pytest.raises(DatasetColumnsError, match="SFTTrainer needs"):
        check_recipe(wrong)


def test_the_command_line_prints_one_line_per_recipe_and_fails_with_one_line(in_workdir, capsys):
    cli_main(["check", "recipes/ssf_sft.yaml", "recipes/lift_sft.yaml"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(": ok (sft" in line for line in out)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check", "recipes/lt_sft_sft.yaml", "--accelerate-config", os.path.join(ACCELERATE, "fsdp2.yaml")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lt_sft" in err[0] and "fsdp" in err[0]


PAPER = sorted(glob.glob(os.path.join(ROOT, "recipes", "paper", "*.yaml")))
#: tiny recipes that are no training method of their own: evaluation / analysis plugins, the plain-LoRA baseline,
#: and the iterative variant of select_kmeans (a comment in recipes/paper/select_kmeans_sft.yaml).
NOT_METHODS = {"infusion_eval_sft", "intruders_sft", "mbpp_eval_sft", "probe_prune_sft", "lora_diffusion",
               "select_kmeans_rounds_sft"}


def header_accelerate_config(recipe):
    """The accelerate config a paper recipe's header launches it with (None: `python -m`, one process)."""
    import re

    header = "".join(line for line in open(recipe) if line.startswith("#"))
    found = re.search(r"--config_file (\S+\.yaml)", header)
    return os.path.join(ROOT, found.group(1)) if found else None


@pytest.fixture
def offline(monkeypatch):
    """No socket may connect: a check that tried to download a model or a dataset fails."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("ftplugins check opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.chdir(ROOT)


def test_every_paper_recipe_checks_offline_with_the_accelerate_config_its_header_names(offline):
    from ftplugins import registry

    stems = {os.path.splitext(os.path.basename(r))[0] for r in PAPER}
    tiny = {os.path.splitext(os.path.basename(r))[0] for r in RECIPES}
    assert tiny - NOT_METHODS <= stems, tiny - NOT_METHODS - stems  # one paper recipe per training method
    table = open(os.path.join(ROOT, "recipes", "paper", "README.md")).read()
    modes = {None: "single", "ddp_gpu.yaml": "ddp", "fsdp2.yaml": "fsdp"}
    for recipe in PAPER:
        config = header_accelerate_config(recipe)
        result = check_recipe(os.path.relpath(recipe, ROOT), accelerate_config=config)
        assert result.mode == modes[config and os.path.basename(config)], recipe
        assert recipe.endswith(f"_{result.command}.yaml"), (recipe, result.command)  # <method>_<command>.yaml
        supported = set.intersection(*(set(registry.load(p).distributed) for p in result.plugins))
        best = "fsdp" if "fsdp" in supported else "ddp" if "ddp" in supported else "single"
        assert result.mode == best, (recipe, supported)  # fsdp2 where supported, else ddp_gpu, else one process
        assert len(result.notes) == 1 and "remote" in result.notes[0], (recipe, result.notes)  # a Hub dataset
        assert os.path.basename(recipe) in table, recipe


def test_a_paper_recipe_with_a_config_its_plugin_refuses_fails_naming_the_plugin(offline):
    with pytest.raises(FtpluginsError, match=r"plugin lt_sft does not support fsdp training"):
        check_recipe("recipes/paper/lt_sft_sft.yaml", accelerate_config=os.path.join(ACCELERATE, "fsdp2.yaml"))
    with pytest.raises(FtpluginsError, match=r"plugin locft does not support ddp training"):
        check_recipe("recipes/paper/locft_sft.yaml", accelerate_config=os.path.join(ACCELERATE, "ddp_gpu.yaml"))


def test_a_hub_dataset_is_not_downloaded_and_everything_else_is_still_checked(offline, tmp_path, capsys):
    cli_main(["check", "recipes/paper/masked_thought_sft.yaml"])  # bf16: true, on a machine without a GPU
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "columns not checked: dataset openai/gsm8k is remote" in out[0]
    base = open("recipes/paper/masked_thought_sft.yaml").read()
    typo = write(tmp_path, "typo.yaml", base + "masked_thought_ratoi: 0.2\n")
    with pytest.raises(OptionError, match="masked_thought_ratoi"):
        check_recipe(typo)
    missing = write(tmp_path, "missing.yaml", base.replace("openai/gsm8k", "data/gsm8k_converted/train.jsonl"))
    with pytest.raises(FtpluginsError, match="neither a local file or folder .* nor a Hub dataset id"):
        check_recipe(missing)
