"""The three study recipes of recipes/studies/ run offline and show what their procedure promises."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "recipes", "studies", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_few_shot_domain_adaptation_on_minilm_beats_the_source_only_model(tmp_path):
    summary = study("fewshot_domain_adaptation").main(["--shots", "1,8", "--source-steps", "20", "--shot-steps", "10",
                                                       "-o", str(tmp_path)])
    points = {p["point"]: p for p in summary["points"]}
    assert [p["rows"] for p in summary["points"]] == [0, 2, 16]  # k examples of each of the two classes
    assert points["shots-8"]["score"] > points["source-only"]["score"]  # the study's lesson, on its own data
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert json.loads((tmp_path / "sweep.json").read_text())["metric"] == "target-domain accuracy"


@pytest.mark.slow
def test_the_instruction_fraction_recipe_runs_as_a_sweep(tmp_path, monkeypatch):
    from ftplugins.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    cli_main(["tiny-model", "runs/tiny-llama"])
    cli_main(["tiny-data", "runs/data"])
    cli_main(["sweep", "--config", os.path.join(REPO, "recipes", "studies", "instruction_fraction_sft.yaml"),
              "--train-fraction", "0.05,0.25", "--heldout", "runs/data/arithmetic/test.jsonl", "-o", "runs/sweep",
              "--", "--max_steps", "2"])
    summary = json.loads((tmp_path / "runs" / "sweep" / "sweep.json").read_text())
    assert [p["rows"] for p in summary["points"]] == [13, 64]  # of the 256 training rows
    assert all(p["score"] < 0 for p in summary["points"])


@pytest.mark.slow
def test_mbpp_finetuning_vs_prompting_scores_both_on_the_same_held_out_tasks(tmp_path):
    from ftplugins.testing import save_tiny_llama

    model = save_tiny_llama(str(tmp_path / "model"))
    result = study("mbpp_finetune_vs_prompting").main(["--model", model, "--steps", "2", "--max-new-tokens", "8",
                                                       "-o", str(tmp_path / "out")])
    assert not set(result["train_tasks"]) & set(result["test_tasks"])
    assert set(result["shots"]) <= set(result["train_tasks"]) and len(result["shots"]) == 3
    scores = result["models"][model]
    assert set(scores) == {"few-shot prompting", "fine-tuning", "parameters"}
    assert 0 <= scores["fine-tuning"]["pass@1"] <= 1 and 0 <= scores["few-shot prompting"]["pass@1"] <= 1
    assert json.loads((tmp_path / "out" / "study.json").read_text())["models"][model] == scores
