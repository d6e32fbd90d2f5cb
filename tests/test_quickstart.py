"""The quick start: what each plugin changes, a fresh output folder per run, and the README's plugins all learn."""

from __future__ import annotations

import json
import os
import re

import pytest

from ftplugins.quickstart import ADAPTER_LR, quickstart

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(out, *args: str) -> dict:
    return quickstart(["--output_dir", str(out), "--eval_prompts", "8", *args])


def readme_plugins() -> list[str]:
    """The plugins the README's quick start section suggests (``--plugins NAME`` there), default first."""
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return list(dict.fromkeys(["masked_thought", *re.findall(r"quickstart --plugins (\w+)", section)]))


def test_masked_thought_corrupts_the_training_inputs_and_records_what_ran(tmp_path, capsys):
    """With masked inputs the model predicts the same labels from corrupted context: its training loss is
    higher than plain fine-tuning's on the same data and seed (held-out loss is measured unmasked)."""
    plain = run(tmp_path / "plain", "--plugins", "none", "--max_steps", "30")
    masked = run(tmp_path / "masked", "--max_steps", "30", "--masked_thought_warmup", "0",
                 "--option", "masked_thought_ratio=0.5")
    deprecation = "--option masked_thought_ratio=0.5 is deprecated; write --masked_thought_ratio 0.5"
    assert deprecation in capsys.readouterr().err
    assert masked["train_loss"] > plain["train_loss"] + 0.1
    assert masked["after"]["eval_loss"] < masked["before"]["eval_loss"]

    out = tmp_path / "masked"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(masked))
    assert saved["plugins"] == ["masked_thought"] and plain["plugins"] == [] and plain["options"] == {}
    options = saved["options"]["masked_thought"]
    assert options["masked_thought_ratio"] == 0.5 and options["masked_thought_warmup"] == 0
    assert "masked_thought_variant" in options  # every option's value, defaults included
    assert saved["settings"]["max_steps"] == 30 and saved["settings"]["learning_rate"] == 3e-3
    manifest = json.loads((out / "model" / "ftplugins_run.json").read_text())
    assert manifest["plugins"] == ["masked_thought"] and manifest["global_step"] == 30
    samples = (out / "samples.txt").read_text().splitlines()
    assert len(samples) == 8
    assert all(re.match(r"\[(right|wrong)\] \d+\+\d+\+\d+=\? -> .*\(gold: \d+\)$", s) for s in samples)


def test_an_adapter_run_replaces_the_folder_and_saves_the_adapter_beside_its_base(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import ftplugins

    out = tmp_path / "qs"
    run(out, "--plugins", "none", "--max_steps", "2")
    (out / "stale.txt").write_text("from an earlier run")
    metrics = run(out, "--plugins", "ssf", "--max_steps", "20")

    assert not (out / "stale.txt").exists() and not (out / "model" / "model.safetensors").exists()
    assert sorted(os.listdir(out)) == ["base", "metrics.json", "model", "samples.txt"]
    assert metrics["adapter"] and metrics["settings"]["learning_rate"] == ADAPTER_LR
    config = json.loads((out / "model" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SSF" and config["base_model_name_or_path"] == str(out / "base")
    assert (out / "model" / "ftplugins_run.json").exists()
    # ssf trains only its scales and shifts: the saved base is the pre-trained base, bit for bit.
    cached = load_file(os.path.join(metrics["base"]["cached_at"], "model.safetensors"))
    saved = load_file(str(out / "base" / "model.safetensors"))
    assert cached.keys() == saved.keys() and all(torch.equal(cached[k], saved[k]) for k in cached)
    assert metrics["trainable_parameters"] < 0.05 * sum(t.numel() for t in cached.values())

    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    tuned = ftplugins.load_adapter(AutoModelForCausalLM.from_pretrained(str(out / "base")), str(out / "model"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)


def test_the_readme_suggests_plugins_that_the_quick_start_knows():
    from ftplugins import registry

    plugins = readme_plugins()
    assert len(plugins) >= 3, plugins
    assert set(plugins) <= set(registry.installed_names())


@pytest.mark.slow
@pytest.mark.parametrize("plugin", readme_plugins())
def test_each_readme_plugin_improves_held_out_accuracy(plugin, tmp_path):
    metrics = quickstart(["--output_dir", str(tmp_path / "qs"), "--plugins", plugin, "--eval_prompts", "32",
                          "--max_steps", "120"])
    before, after = metrics["before"]["answer_accuracy"], metrics["after"]["answer_accuracy"]
    assert after >= before + 0.25, (before, after)
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]
