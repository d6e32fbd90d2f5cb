"""`python -m ftplugins.train {sft,dpo,grpo}`: TRL's own YAML plus `plugins:` and plugin keys."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftplugins.errors import FtpluginsError, ModelPathError, OptionError, UnknownPluginError
from ftplugins.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "ftplugins-freeze-embeddings")


def trl_yaml(path, model, dataset, output_dir, **extra):
    """A config file in the form `trl sft --config` accepts (TRL keys only), plus `extra`."""
    config = dict(
        model_name_or_path=model,
        dataset_name=dataset,
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    config.update(extra)
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return str(path)


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory) -> str:
    """The example third-party plugin, pip-installed into a folder put on PYTHONPATH."""
    target = str(tmp_path_factory.mktemp("site"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, EXAMPLE],
        check=True,
    )
    return target


def env_with(site):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_third_party_plugin_trains_from_trl_yaml(example_plugin_site, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    config = trl_yaml(tmp_path / "sft.yaml", tiny_model_dir, f"{data_dir}/arithmetic", out,
                      plugins=["freeze_embeddings"], freeze_embeddings_output=True)
    listing = subprocess.run([sys.executable, "-m", "ftplugins.cli", "list"], env=env_with(example_plugin_site),
                             capture_output=True, text=True, check=True)
    assert "freeze_embeddings" in listing.stdout
    proc = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--config", config],
                          env=env_with(example_plugin_site), capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_dpo_runs_through_the_same_path(tiny_model_dir, data_dir, tmp_path, recorder_entry_point):
    out = tmp_path / "dpo"
    config = trl_yaml(tmp_path / "dpo.yaml", tiny_model_dir, f"{data_dir}/preference", out, max_length=64)
    train(["dpo", "--config", config, "--plugins", "recorder"])
    assert recorder_entry_point.calls[0] == "trainer_mixins" and recorder_entry_point.calls[-1] == "post_train"
    assert recorder_entry_point.calls.count("validate") == 1
    assert os.path.isfile(out / "model.safetensors")


def test_grpo_runs_through_the_same_path(tiny_model_dir, data_dir, tmp_path, recorder_entry_point, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def constant(completions, **kw):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = trl_yaml(tmp_path / "grpo.yaml", tiny_model_dir, f"{data_dir}/prompts", tmp_path / "grpo",
                      num_generations=2, max_completion_length=4, reward_funcs=["my_rewards.constant"])
    train(["grpo", "--config", config, "--plugins", "recorder"])
    assert recorder_entry_point.calls.count("reward_funcs") == 1
    assert recorder_entry_point.calls[-1] == "post_train"


def test_cli_flags_override_yaml_and_reach_plugin_options(tiny_model_dir, data_dir, tmp_path, recorder_entry_point):
    config = trl_yaml(tmp_path / "c.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "o",
                      plugins=["recorder"], recorder_tag="from-yaml")
    train(["sft", "--config", config, "--recorder_tag", "from-cli", "--max_steps", "1"])
    run = recorder_entry_point.runs[-1]
    assert run.options_for("recorder").recorder_tag == "from-cli"
    assert run.trainer.state.global_step == 1


def test_unknown_plugin_option_in_yaml_lists_valid_ones(tiny_model_dir, data_dir, tmp_path, recorder_entry_point):
    config = trl_yaml(tmp_path / "c.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "o",
                      plugins=["recorder"], recorder_tga="typo")
    with pytest.raises(OptionError, match="recorder_tga.*did you mean recorder_tag.*valid plugin options"):
        train(["sft", "--config", config])


def test_unknown_cli_option_fails(tiny_model_dir, data_dir, tmp_path, recorder_entry_point):
    config = trl_yaml(tmp_path / "c.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "o")
    with pytest.raises(OptionError, match="--recorder_bogus"):
        train(["sft", "--config", config, "--plugins", "recorder", "--recorder_bogus", "1"])


def test_unknown_plugin_names_installed_and_closest(tiny_model_dir, tmp_path, recorder_entry_point):
    with pytest.raises(UnknownPluginError, match="recordr: no such plugin; did you mean recorder\\?.*Installed: .*recorder"):
        train(["sft", "--model_name_or_path", tiny_model_dir, "--plugins", "recordr"])


def test_missing_model_path_is_a_clear_error(data_dir, tmp_path, recorder_entry_point):
    config = trl_yaml(tmp_path / "c.yaml", str(tmp_path / "no-such-model"), f"{data_dir}/arithmetic", tmp_path / "o")
    with pytest.raises(ModelPathError, match="no-such-model.*does not exist"):
        train(["sft", "--config", config])


def test_cli_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--plugins", "nope",
                           "--model_name_or_path", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "nope: no such plugin" in proc.stderr


def test_unknown_command(tmp_path):
    with pytest.raises(FtpluginsError, match="unknown command 'stf'; did you mean sft"):
        train(["stf"])
