"""Every recipe in recipes/ runs offline (shortened to one step)."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from ftplugins.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml")))
# Extra command-line arguments for every recipe run, e.g. "--use_cpu false" to run the recipes on a GPU machine.
EXTRA_ARGS = os.environ.get("FTPLUGINS_RECIPE_ARGS", "").split()


def test_one_recipe_per_shipped_method():
    from ftplugins.registry import available_entry_points

    covered = set()
    for path in RECIPES:
        covered.update(yaml.safe_load(open(path)).get("plugins", []))
    from ftplugins.registry import load

    builtin = {name for name, ep in available_entry_points().items()
               if ep.value.startswith("ftplugins.methods.") and load(name).trains}
    assert {"masked_thought", "ssf"} <= builtin
    assert builtin <= covered, f"methods without a recipe: {sorted(builtin - covered)}"


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_recipe_runs(recipe, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    train(["sft", "--config", recipe, "--model_name_or_path", tiny_model_dir, "--dataset_name",
           f"{data_dir}/arithmetic", "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no",
           "--disable_tqdm", "true", *EXTRA_ARGS])
    assert (out / "ftplugins_run.json").exists()
    assert (out / "model.safetensors").exists() or (out / "adapter_model.safetensors").exists()
